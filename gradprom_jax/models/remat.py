"""Rematerialisation of a model's blocks: recompute activations in the backward pass to save memory.

A block wrapped in ``nn.remat`` keeps only its input for the backward pass and recomputes everything
inside it, trading about one more forward pass for the memory of its activations. At full image
size (512x512 and more) those activations, not the parameters, fill an accelerator.
"""
from __future__ import annotations

import flax.linen as nn


def maybe_remat(module_class: type[nn.Module], enabled: bool) -> type[nn.Module]:
  """``module_class``, rematerialised (``flax.linen.remat``) when ``enabled``.

  The wrapped class keeps the original's name, so its automatic submodule names, and with them the
  parameter tree and checkpoints, are the same with and without remat.

  >>> import jax, jax.numpy as jnp
  >>> dense = maybe_remat(nn.Dense, True)
  >>> dense.__name__
  'Dense'
  >>> class Net(nn.Module):
  ...   remat: bool
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     return maybe_remat(nn.Dense, self.remat)(2)(x)
  >>> shapes = lambda remat: jax.tree.map(jnp.shape, jax.eval_shape(
  ...     Net(remat).init, jax.random.key(0), jnp.ones((1, 3))))
  >>> shapes(True) == shapes(False) == {"params": {"Dense_0": {"bias": (2,), "kernel": (3, 2)}}}
  True
  """
  if not enabled:
    return module_class
  wrapped = nn.remat(module_class)
  wrapped.__name__ = wrapped.__qualname__ = module_class.__name__
  return wrapped
