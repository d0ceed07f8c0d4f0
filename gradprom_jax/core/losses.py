"""Losses of the enhancer (L_IP); each task kind's loss (L_VR) lives in its module of
:mod:`gradprom_jax.tasks`.

Each returns a scalar float32 mean over the batch, jit-able and differentiable; every term is a
mean of per-example values, so the mean of a batch's equal parts' losses is the batch's loss.
Images are float32 NHWC in [0, 1].
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error.

  >>> l1_loss(jnp.zeros((1, 2, 2, 1)), jnp.full((1, 2, 2, 1), 0.5))
  Array(0.5, dtype=float32)
  """
  return jnp.mean(jnp.abs(pred - target))


def mse_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error.

  >>> mse_loss(jnp.zeros((1, 2, 2, 1)), jnp.full((1, 2, 2, 1), 0.5))
  Array(0.25, dtype=float32)
  """
  return jnp.mean(jnp.square(pred - target))


def charbonnier_loss(pred: jax.Array, target: jax.Array,
                     eps: float = 1e-3) -> jax.Array:
  """Charbonnier loss: mean of sqrt(diff^2 + eps^2), a differentiable L1.

  Smooth at zero (L1's gradient jumps there) and L1-like for |diff| >> eps,
  as used by LapSRN and many restoration models.

  >>> charbonnier_loss(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)), eps=0.1)
  Array(0.1, dtype=float32)
  """
  return jnp.mean(jnp.sqrt(jnp.square(pred - target) + eps**2))


def ssim_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """1 - SSIM (dm-pix, 11x11 Gaussian window, sigma 1.5, max value 1).

  Images need at least 11x11 pixels (SSIM uses a VALID window).

  >>> x = jnp.linspace(0, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
  >>> round(float(ssim_loss(x, x)), 6)
  0.0
  """
  return 1.0 - jnp.mean(dm_pix.ssim(pred, target, max_val=1.0))


_PIXEL_LOSSES = {"l1": l1_loss, "mse": mse_loss, "charbonnier": charbonnier_loss}


def enhancement_loss(pred: jax.Array, target: jax.Array, kind: str = "l1",
                     ssim_weight: float = 0.0) -> jax.Array:
  """Pixel loss `kind` (l1, mse or charbonnier) plus `ssim_weight` * (1 - SSIM).

  >>> pred, target = jnp.zeros((1, 16, 16, 1)), jnp.full((1, 16, 16, 1), 0.5)
  >>> enhancement_loss(pred, target, kind="mse")
  Array(0.25, dtype=float32)
  >>> enhancement_loss(pred, target, kind="l2")
  Traceback (most recent call last):
  ...
  ValueError: unknown enhancement loss kind 'l2'; valid: l1, mse, charbonnier
  """
  if kind not in _PIXEL_LOSSES:
    raise ValueError(f"unknown enhancement loss kind {kind!r}; "
                     f"valid: {', '.join(_PIXEL_LOSSES)}")
  loss = _PIXEL_LOSSES[kind](pred, target)
  if ssim_weight:  # A Python float: skip the SSIM computation when unused.
    loss = loss + ssim_weight * ssim_loss(pred, target)
  return loss
