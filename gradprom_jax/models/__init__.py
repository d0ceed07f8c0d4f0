"""Enhancers (mainstream model) and recognisers (auxiliary model), by name.

All are `flax.linen` Modules called as `model.apply(params, x, train=...)` on
float32 NHWC images, with GroupNorm or no normalisation (no mutable state).

>>> model = create_enhancer("edsr", channels=1, scale=2, features=8, num_blocks=1)
>>> type(model).__name__, model.scale
('EDSR', 2)
"""

from __future__ import annotations

import flax.linen as nn

from gradprom_jax.models.edsr import EDSR
from gradprom_jax.models.resnet import ResNetClassifier
from gradprom_jax.models.unet import UNetEnhancer, UNetSegmenter

__all__ = [
    "EDSR", "ResNetClassifier", "UNetEnhancer", "UNetSegmenter",
    "create_enhancer", "create_recognizer",
]

ENHANCERS: dict[str, type[nn.Module]] = {"unet": UNetEnhancer, "edsr": EDSR}
RECOGNIZERS: dict[str, type[nn.Module]] = {
    "resnet": ResNetClassifier, "unet_segmenter": UNetSegmenter}


def _create(kind: str, registry: dict[str, type[nn.Module]], name: str,
            kwargs: dict) -> nn.Module:
  if name not in registry:
    raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(registry)}")
  return registry[name](**kwargs)


def create_enhancer(name: str, **kwargs) -> nn.Module:
  """Builds an enhancer: "unet" (`UNetEnhancer`) or "edsr" (`EDSR`).

  >>> create_enhancer("unet", channels=3).features
  32
  >>> create_enhancer("srcnn", channels=3)
  Traceback (most recent call last):
  ...
  ValueError: unknown enhancer 'srcnn'; valid: unet, edsr
  """
  return _create("enhancer", ENHANCERS, name, kwargs)


def create_recognizer(name: str, **kwargs) -> nn.Module:
  """Builds a recogniser: "resnet" (`ResNetClassifier`) or "unet_segmenter".

  >>> create_recognizer("unet_segmenter", num_classes=2).num_classes
  2
  """
  return _create("recognizer", RECOGNIZERS, name, kwargs)
