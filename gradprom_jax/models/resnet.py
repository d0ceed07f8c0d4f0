"""ResNet-style image classifier (He et al., 2016) with GroupNorm.

GroupNorm replaces BatchNorm (Wu & He, 2018): there are no batch statistics
to carry as mutable state, synchronise across devices or switch between
training and evaluation, and small per-device batches are fine. This matters
here because gradients flow from the classifier back into the enhancer: a
BatchNorm classifier would make each image's gradient depend on the rest of
its batch.

The stem is a stride-1 3x3 convolution (no 7x7/stride-2 stem and max-pool),
suited to small medical images such as 28x28 PneumoniaMNIST; every stage
after the first halves the resolution.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradprom_jax.models.remat import maybe_remat
from gradprom_jax.models.unet import group_norm


class BasicBlock(nn.Module):
  """Two 3x3 convs with GroupNorm; the second norm's scale starts at zero.

  Zero-initialising the last scale makes each block start as the identity
  (Goyal et al., 2017), which eases the training of deeper stacks.
  """
  features: int
  strides: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Conv(self.features, (3, 3), self.strides, use_bias=False, dtype=self.dtype)(x)
    y = nn.relu(group_norm(self.features, self.dtype)(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(y)
    y = group_norm(self.features, self.dtype, scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), self.strides, use_bias=False, dtype=self.dtype)(x)
      x = group_norm(self.features, self.dtype)(x)
    return nn.relu(x + y)


class ResNetClassifier(nn.Module):
  """ResNet classifier: images (N, H, W, C) -> logits (N, num_classes).

  Attributes:
    num_classes: number of classes.
    stage_sizes: residual blocks per stage; (2, 2, 2, 2) is ResNet-18.
    features: width of the first stage, doubled at each following stage.
    dtype: compute dtype (float32 or bfloat16; the logits come out in it);
      parameters stay float32.
    remat: recompute each residual block in the backward pass (saves memory).

  >>> import jax
  >>> model = ResNetClassifier(num_classes=3, stage_sizes=(1, 1), features=4)
  >>> x = jnp.zeros((2, 28, 28, 1))
  >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)  # Shapes only.
  >>> jax.eval_shape(model.apply, variables, x)
  ShapeDtypeStruct(shape=(2, 3), dtype=float32)
  """
  # What one logit vector scores: an image (config validation matches it to the task's kind).
  logits_per: ClassVar[str] = "image"

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  features: int = 32
  dtype: Any = jnp.float32
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # GroupNorm and no dropout: training and evaluation agree.
    x = nn.Conv(self.features, (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(group_norm(self.features, self.dtype)(x))
    block_class = maybe_remat(BasicBlock, self.remat)
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = block_class(self.features * 2**stage, strides, self.dtype)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)
