"""EDSR-style super-resolution network (Lim et al., 2017).

Residual blocks without normalisation (EDSR's finding: BatchNorm hurts
super-resolution by removing the range flexibility of features; it also
leaves no mutable statistics, keeping the train step pure), sub-pixel
(pixel-shuffle) upsampling, and a global skip from the bicubically upsampled
input so the network learns only the missing detail.
"""

from __future__ import annotations

from typing import Any

import dm_pix
import flax.linen as nn
import jax
import jax.numpy as jnp

from gradprom_jax.models.remat import maybe_remat
from gradprom_jax.models.resampling import upsample


def upsampling_steps(scale: int) -> tuple[int, ...]:
  """Pixel-shuffle factors that make up `scale`: x4 is two x2 steps, as in EDSR.

  >>> upsampling_steps(4), upsampling_steps(3), upsampling_steps(1)
  ((2, 2), (3,), ())
  """
  if scale == 3:
    return (3,)
  if scale >= 1 and scale & (scale - 1) == 0:
    return (2,) * (scale.bit_length() - 1)
  raise ValueError(f"EDSR scale must be 1, 3 or a power of two, got {scale}")


class ResidualBlock(nn.Module):
  """conv-ReLU-conv, scaled by `residual_scale` and added to the input."""
  features: int
  residual_scale: float = 1.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(nn.Conv(self.features, (3, 3), dtype=self.dtype)(x))
    y = nn.Conv(self.features, (3, 3), dtype=self.dtype)(y)
    return x + self.residual_scale * y


class EDSR(nn.Module):
  """EDSR super-resolution: (N, h, w, C) -> (N, h * scale, w * scale, C).

  The output convolution is zero-initialised, so at initialisation the model
  returns the bicubic upsampling of its input (the "no enhancement"
  reference). The output is clipped to [0, 1] at evaluation (`train=False`)
  only, so training keeps gradients of out-of-range pixels.

  Attributes:
    channels: image channels (1 grey, 3 RGB).
    scale: upsampling factor: 1, 2, 3, 4, 8, ...
    features: width of the residual trunk.
    num_blocks: number of residual blocks.
    residual_scale: multiplier of each block's branch (EDSR uses 0.1 for wide
      models to stabilise training).
    dtype: compute dtype (float32 or bfloat16); parameters stay float32, and
      the bicubic base, so the output is float32 either way.
    remat: recompute each residual block in the backward pass (saves memory).

  >>> import jax
  >>> model = EDSR(channels=3, scale=4, features=8, num_blocks=1)
  >>> x = jnp.full((1, 6, 5, 3), 0.25)
  >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)  # Shapes only.
  >>> jax.eval_shape(model.apply, variables, x)
  ShapeDtypeStruct(shape=(1, 24, 20, 3), dtype=float32)
  """
  channels: int
  scale: int
  features: int = 64
  num_blocks: int = 8
  residual_scale: float = 1.0
  dtype: Any = jnp.float32
  remat: bool = False

  @staticmethod
  def check_scale(scale: int) -> None:
    """Raises ValueError unless pixel shuffles can make up `scale` (1, 3 or a power of two)."""
    upsampling_steps(scale)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.shape[-1] != self.channels:
      raise ValueError(f"EDSR(channels={self.channels}) got an input with "
                       f"{x.shape[-1]} channels, shape {x.shape}")
    steps = upsampling_steps(self.scale)  # Validates the scale before any work.
    head = nn.Conv(self.features, (3, 3), dtype=self.dtype)(x)
    y = head
    block = maybe_remat(ResidualBlock, self.remat)
    for _ in range(self.num_blocks):
      y = block(self.features, self.residual_scale, self.dtype)(y)
    y = nn.Conv(self.features, (3, 3), dtype=self.dtype)(y) + head
    for factor in steps:
      y = nn.Conv(self.features * factor**2, (3, 3), dtype=self.dtype)(y)
      y = dm_pix.depth_to_space(y, factor)
    detail = nn.Conv(self.channels, (3, 3), kernel_init=nn.initializers.zeros,
                     dtype=self.dtype)(y)
    base = upsample(x, self.scale) if self.scale > 1 else x
    out = base + detail
    return out if train else jnp.clip(out, 0.0, 1.0)
