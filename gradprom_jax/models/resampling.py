"""Bicubic upsampling: the enhancers' global skip and the "no enhancement" reference.

It lives with the models (which need it) rather than with the degradations (which re-export it), so
that the models import nothing from the rest of the package.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def check_scale(scale: int) -> None:
  """Raises ValueError unless ``scale`` is a positive integer.

  >>> check_scale(0)
  Traceback (most recent call last):
  ...
  ValueError: scale must be a positive integer, got 0
  """
  if not isinstance(scale, int) or isinstance(scale, bool) or scale < 1:
    raise ValueError(f"scale must be a positive integer, got {scale!r}")


def upsample(images: jax.Array, scale: int) -> jax.Array:
  """Bicubic upsampling by an integer `scale`, clipped to [0, 1].

  The "no enhancement" reference of super-resolution, and the global skip of
  the enhancers.

  >>> upsample(jnp.ones((2, 3, 5, 1)), 2).shape
  (2, 6, 10, 1)
  """
  check_scale(scale)
  n, h, w, c = images.shape
  big = jax.image.resize(images, (n, h * scale, w * scale, c), method="bicubic")
  return jnp.clip(big, 0.0, 1.0)
