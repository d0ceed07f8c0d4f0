"""Gradient accumulation that GradProm can trust: average g_e AND g_t over micro-batches, then combine once.

``optax.MultiSteps(gradprom(...))`` would be silently wrong: MultiSteps accumulates ``updates`` (g_e)
but hands the combiner the *last* micro-batch's ``task_grads``, so the cosine and the added term
would come from one micro-batch while g_e comes from all of them (the combiners refuse to run inside
it). The train step accumulates every gradient itself with :func:`accumulate_gradients` and calls
the optimiser once per accumulated step: the update ``gradprom_jax.multi_steps`` (which averages
``task_grads`` too) emits from the same micro-batches. :func:`check_not_wrapped_in_multisteps`
refuses an optimiser state where a combiner sits inside either wrapper, so there is one way to
accumulate in the train step.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners.state import CombinerState


def split_micro_batches(tree: Any, num_micro_batches: int) -> Any:
  """Every leaf ``(n, ...)`` -> ``(num_micro_batches, n // num_micro_batches, ...)``.

  Micro-batch ``i`` holds examples ``i, i + k, i + 2k, ...`` (k = ``num_micro_batches``): strided,
  so that a batch sharded along its first axis stays sharded within every micro-batch.

  >>> import numpy as np
  >>> split_micro_batches({"x": np.arange(6)}, 2)["x"].tolist()
  [[0, 2, 4], [1, 3, 5]]
  """
  def split(x):
    if x.shape[0] % num_micro_batches:
      raise ValueError(f"a batch of {x.shape[0]} does not split into {num_micro_batches} "
                       "equal micro-batches")
    return jnp.swapaxes(
        jnp.reshape(x, (x.shape[0] // num_micro_batches, num_micro_batches, *x.shape[1:])), 0, 1)
  return jax.tree.map(split, tree)


def accumulate_gradients(grad_fn: Callable[[Any], Any], batch: Any, num_micro_batches: int) -> Any:
  """The mean of ``grad_fn(micro_batch)`` over ``num_micro_batches`` micro-batches of ``batch``.

  ``grad_fn`` may return any pytree of float arrays (gradients, losses, ``None`` for absent terms).
  A ``lax.scan`` runs one micro-batch at a time, so only one micro-batch's activations are alive:
  for losses that are means over examples, the result equals ``grad_fn(batch)`` up to float
  rounding, with 1/k of the activation memory. A class-weighted loss (Σ w·ℓ / Σ w) equals it only
  when each micro-batch divides by 1/k of the whole batch's Σ w (its ``normalizer``), as the train
  step does.

  >>> import jax, jax.numpy as jnp
  >>> loss = lambda w, x: jnp.mean((x * w - 1.0) ** 2)
  >>> x = jnp.arange(8.0)
  >>> whole = jax.grad(loss)(2.0, x)
  >>> accumulated = accumulate_gradients(lambda xs: jax.grad(loss)(2.0, xs), x, 4)
  >>> bool(jnp.allclose(whole, accumulated))
  True
  """
  if num_micro_batches == 1:
    return grad_fn(batch)
  micro_batches = split_micro_batches(batch, num_micro_batches)
  shapes = jax.eval_shape(grad_fn, jax.tree.map(lambda x: x[0], micro_batches))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def add_micro_batch(total, micro_batch):
    return jax.tree.map(jnp.add, total, grad_fn(micro_batch)), None

  total, _ = jax.lax.scan(add_micro_batch, zeros, micro_batches)
  return jax.tree.map(lambda t: t / num_micro_batches, total)


def check_not_wrapped_in_multisteps(opt_state: Any) -> None:
  """Raises ValueError if a combiner's state sits inside an ``optax.MultiSteps`` state.

  >>> import jax.numpy as jnp, optax
  >>> from gradprom_jax.core.combiners import gradprom
  >>> params = {"w": jnp.zeros(2)}
  >>> check_not_wrapped_in_multisteps(optax.chain(gradprom(), optax.sgd(0.1)).init(params))
  >>> wrapped = optax.MultiSteps(optax.chain(gradprom(), optax.sgd(0.1)), every_k_schedule=4)
  >>> check_not_wrapped_in_multisteps(wrapped.init(params))
  Traceback (most recent call last):
  ...
  ValueError: a gradient combiner (gradprom, joint, ...) is wrapped in optax.MultiSteps (or gradprom_jax.multi_steps); the train step accumulates g_e and g_t itself: set config accumulate_steps instead (the same update)
  """
  is_multisteps = lambda x: isinstance(x, optax.MultiStepsState)
  is_combiner = lambda x: isinstance(x, CombinerState)
  for state in jax.tree.leaves(opt_state, is_leaf=is_multisteps):
    if is_multisteps(state) and any(
        is_combiner(s) for s in jax.tree.leaves(state.inner_opt_state, is_leaf=is_combiner)):
      raise ValueError(
          "a gradient combiner (gradprom, joint, ...) is wrapped in optax.MultiSteps (or "
          "gradprom_jax.multi_steps); the train step accumulates g_e and g_t itself: set config "
          "accumulate_steps instead (the same update)")
