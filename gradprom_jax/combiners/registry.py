"""Combiners by name, so a config's ``method`` picks one."""
from __future__ import annotations

from typing import Any, Callable

import optax

from gradprom_jax.combiners.baselines import enhance_only, joint, pcgrad, random_gate
from gradprom_jax.combiners.gradprom import gradprom

COMBINERS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "gradprom": gradprom,
    "joint": joint,
    "pcgrad": pcgrad,
    "enhance_only": enhance_only,
    "random_gate": random_gate,
}


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
