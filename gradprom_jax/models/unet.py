"""U-Nets: a residual enhancer for same-size restoration and a segmenter.

Both share one encoder-decoder body (`UNet`). Normalisation is GroupNorm, not
BatchNorm: there are no mutable batch statistics, so the train step stays a
pure function of (params, batch), evaluation equals training-mode inference,
and small per-device batches are fine.

Any input size works: the encoder max-pools with SAME padding and the decoder
resizes to the skip connection's exact size, so odd sizes such as 7x7 (a 28x28
image at level 3) need no cropping.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradprom_jax.models.remat import maybe_remat
from gradprom_jax.models.resampling import upsample


def group_norm(features: int, dtype: Any = jnp.float32, **kwargs) -> nn.GroupNorm:
  """GroupNorm with up to 8 groups, as many as divide `features`.

  Its statistics are computed in float32 whatever `dtype` (flax's default), so bfloat16 activations
  are normalised as precisely as float32 ones.

  >>> group_norm(12).num_groups
  4
  """
  return nn.GroupNorm(num_groups=math.gcd(features, 8), dtype=dtype, **kwargs)


class ConvBlock(nn.Module):
  """Two 3x3 convolutions, each followed by GroupNorm and SiLU.

  The convolutions have no bias: GroupNorm's shift makes it redundant, and a redundant bias has a
  gradient of pure round-off, which Adam would amplify into lr-sized random steps.
  """
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for _ in range(2):
      x = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(x)
      x = nn.silu(group_norm(self.features, self.dtype)(x))
    return x


class UNet(nn.Module):
  """Encoder-decoder with skip connections, `num_levels` resolutions.

  Features double at each coarser level: `features`, 2 `features`, ...
  The last layer is a 1x1 convolution to `out_channels`, zero-initialised
  when `zero_init_output` (so a residual model starts as the identity).
  `dtype` is the compute dtype (parameters stay float32); `remat` recomputes
  each `ConvBlock` in the backward pass.

  >>> import jax
  >>> net = UNet(out_channels=2, features=4, num_levels=3)
  >>> x = jnp.zeros((1, 28, 28, 1))
  >>> variables = jax.eval_shape(net.init, jax.random.key(0), x)  # Shapes only.
  >>> jax.eval_shape(net.apply, variables, x).shape
  (1, 28, 28, 2)
  """
  out_channels: int
  features: int = 32
  num_levels: int = 3
  zero_init_output: bool = False
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.num_levels < 1:
      raise ValueError(f"num_levels must be >= 1, got {self.num_levels}")
    block = maybe_remat(ConvBlock, self.remat)
    skips = []
    for level in range(self.num_levels - 1):
      x = block(self.features * 2**level, self.dtype)(x)
      skips.append(x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = block(self.features * 2**(self.num_levels - 1), self.dtype)(x)
    for level in reversed(range(self.num_levels - 1)):
      skip = skips[level]
      # Bilinear resize to the skip's own size handles odd sizes exactly.
      x = jax.image.resize(x, (*skip.shape[:3], x.shape[-1]), "bilinear")
      x = block(self.features * 2**level, self.dtype)(jnp.concatenate([x, skip], -1))
    kernel_init = (nn.initializers.zeros if self.zero_init_output
                   else nn.linear.default_kernel_init)
    return nn.Conv(self.out_channels, (1, 1), kernel_init=kernel_init, dtype=self.dtype)(x)


class UNetEnhancer(nn.Module):
  """Image enhancer: a U-Net predicting a residual added to its input.

  With `scale` > 1 the input is first upsampled bicubically by `scale`, so the
  U-Net works at the output resolution (as SRCNN/VDSR do). The output layer is
  zero-initialised: at initialisation the enhancer returns its (upsampled)
  input, i.e. the "no enhancement" reference. The output is clipped to [0, 1]
  at evaluation (`train=False`), not in training, where clipping would zero
  the gradient of out-of-range pixels.

  Attributes:
    channels: image channels (1 grey, 3 RGB).
    scale: upsampling factor (1 for denoising / deblurring).
    features: width of the finest level.
    num_levels: resolutions of the U-Net.
    dtype: compute dtype (float32 or bfloat16); parameters stay float32, and
      the residual is added to the float32 input, so the output is float32.
    remat: recompute each U-Net block in the backward pass (saves memory).

  >>> import jax
  >>> model = UNetEnhancer(channels=1, scale=2, features=4, num_levels=2)
  >>> x = jnp.full((2, 8, 8, 1), 0.5)
  >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)  # Shapes only.
  >>> jax.eval_shape(model.apply, variables, x)
  ShapeDtypeStruct(shape=(2, 16, 16, 1), dtype=float32)
  """
  channels: int
  scale: int = 1
  features: int = 32
  num_levels: int = 3
  dtype: Any = jnp.float32
  remat: bool = False

  @staticmethod
  def check_scale(scale: int) -> None:
    """Any integer scale >= 1 works: the input is bicubically upsampled before the U-Net."""
    if scale < 1:
      raise ValueError(f"UNetEnhancer scale must be >= 1, got {scale}")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if x.shape[-1] != self.channels:
      raise ValueError(f"UNetEnhancer(channels={self.channels}) got an input "
                       f"with {x.shape[-1]} channels, shape {x.shape}")
    base = upsample(x, self.scale) if self.scale > 1 else x
    residual = UNet(self.channels, self.features, self.num_levels, zero_init_output=True,
                    dtype=self.dtype, remat=self.remat)(base)
    out = base + residual
    return out if train else jnp.clip(out, 0.0, 1.0)


class UNetSegmenter(nn.Module):
  """Segmenter: a U-Net returning per-pixel logits (N, H, W, num_classes).

  `num_classes=2` (background, lesion) for a binary mask with softmax
  cross-entropy; `num_classes=1` for a single sigmoid channel (BCE).
  `train` is accepted for a uniform interface; the model has no dropout or
  batch statistics, so it does not change the output. `dtype` is the compute
  dtype (the logits come out in it); `remat` recomputes each block in the
  backward pass.

  >>> import jax
  >>> model = UNetSegmenter(num_classes=3, features=4, num_levels=2)
  >>> x = jnp.zeros((2, 12, 10, 3))
  >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)  # Shapes only.
  >>> jax.eval_shape(model.apply, variables, x)
  ShapeDtypeStruct(shape=(2, 12, 10, 3), dtype=float32)
  """
  # What one logit vector scores: a pixel (config validation matches it to the task's kind).
  logits_per: ClassVar[str] = "pixel"

  num_classes: int
  features: int = 32
  num_levels: int = 3
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # No train/eval difference: see the class docstring.
    return UNet(self.num_classes, self.features, self.num_levels, dtype=self.dtype,
                remat=self.remat)(x)
