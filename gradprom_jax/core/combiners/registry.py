"""Combiners by name, so a config's ``method`` picks one (derived from :mod:`gradprom_jax.core.methods`)."""
from __future__ import annotations

from typing import Any, Callable

import optax

from gradprom_jax.core.methods import COMBINER_FACTORIES

# The methods that have a combiner; declared, with their config keys, in gradprom_jax.core.methods.
COMBINERS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = dict(COMBINER_FACTORIES)


def get_combiner(name: str, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
  """The combiner called ``name``, built with ``kwargs``.

  >>> tx = get_combiner("gradprom", threshold=0.1, mode="soft")
  >>> type(tx).__name__
  'GradientTransformationExtraArgs'
  >>> get_combiner("gradnorm")
  Traceback (most recent call last):
  ...
  ValueError: Unknown combiner 'gradnorm'; valid names: enhance_only, gradprom, joint, pcgrad, random_gate.
  """
  if name not in COMBINERS:
    raise ValueError(f"Unknown combiner {name!r}; valid names: {', '.join(sorted(COMBINERS))}.")
  return COMBINERS[name](**kwargs)
