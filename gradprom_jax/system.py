"""The task-driven enhancement system: degradation → enhancer → recogniser, and their losses.

:class:`TaskDrivenSystem` holds no parameters: it is the static description of the maths (modules,
degradation, loss choices), hashable so that jitted steps can close over it. Parameters live in the
:class:`~gradprom_jax.train_state.TrainState`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gradprom_jax import degradations, losses, models


@dataclasses.dataclass(frozen=True)
class TaskDrivenSystem:
  """An enhancer feeding a recogniser, with the degradation that makes the enhancer's input.

  Attributes:
    enhancer: the image enhancement module (low quality → high-quality size).
    recognizer: the recognition module (image → class logits or per-pixel logits).
    degradation: simulates the low-quality input from a high-quality batch, on device.
    recognition: "segmentation" or "classification".
    num_classes: classes of the recogniser's output.
    enhancement_loss_kind, ssim_weight: the enhancement loss (see ``losses.enhancement_loss``).
    dice_weight, label_smoothing, class_weights: the task loss's options.
  """
  enhancer: nn.Module
  recognizer: nn.Module
  degradation: degradations.Degradation
  recognition: str
  num_classes: int
  enhancement_loss_kind: str = "l1"
  ssim_weight: float = 0.0
  dice_weight: float = 1.0
  label_smoothing: float = 0.0
  class_weights: tuple[float, ...] | None = None

  def degrade(self, key: jax.Array, high_quality: jax.Array, example_ids: jax.Array) -> jax.Array:
    """The low-quality input of each example, seeded by (``key``, the example's global index).

    Keying noise by the example's index rather than its position on a device makes the result the
    same on one device, on a mesh, under pmap and on several hosts.
    """
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(example_ids)
    return jax.vmap(lambda k, x: self.degradation(k, x[None])[0])(keys, high_quality)

  # Outputs come back in float32 whatever the models' compute dtype (mixed precision): the losses,
  # their gradients at the enhanced image, metrics and GradProm's cosine are all float32.
  def enhance(self, params: Any, low_quality: jax.Array, *, train: bool) -> jax.Array:
    return self.enhancer.apply({"params": params}, low_quality, train=train).astype(jnp.float32)

  def recognize(self, params: Any, images: jax.Array, *, train: bool) -> jax.Array:
    return self.recognizer.apply({"params": params}, images, train=train).astype(jnp.float32)

  def interpolate(self, low_quality: jax.Array) -> jax.Array:
    """The no-enhancement reference: the degraded input, bicubically upsampled to full size."""
    scale = self.degradation.scale
    return low_quality if scale == 1 else degradations.upsample(low_quality, scale)

  def enhancement_loss(self, enhanced: jax.Array, high_quality: jax.Array) -> jax.Array:
    return losses.enhancement_loss(enhanced, high_quality, kind=self.enhancement_loss_kind,
                                   ssim_weight=self.ssim_weight)

  def task_loss(self, logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
    weights = None if self.class_weights is None else jnp.asarray(self.class_weights, jnp.float32)
    if self.recognition == "segmentation":
      return losses.segmentation_loss(logits, batch["mask"], dice_weight=self.dice_weight,
                                      class_weights=weights)
    return losses.classification_loss(logits, batch["label"], class_weights=weights,
                                      label_smoothing=self.label_smoothing)

  def probabilities(self, logits: jax.Array) -> jax.Array:
    """Class probabilities (per pixel for segmentation); a 1-channel output is a sigmoid."""
    if logits.shape[-1] == 1:
      positive = jax.nn.sigmoid(logits)
      return jnp.concatenate([1 - positive, positive], axis=-1)
    return jax.nn.softmax(logits, axis=-1)

  def init_params(self, key: jax.Array, image_shape: tuple[int, int, int]) -> tuple[Any, Any]:
    """Initial (enhancer, recogniser) parameters for high-quality images of ``image_shape``."""
    height, width, channels = image_shape
    scale = self.degradation.scale
    enhancer_key, recognizer_key = jax.random.split(key)
    low_quality = jnp.zeros((1, height // scale, width // scale, channels), jnp.float32)
    high_quality = jnp.zeros((1, height, width, channels), jnp.float32)
    enhancer_params = self.enhancer.init(enhancer_key, low_quality, train=False)["params"]
    recognizer_params = self.recognizer.init(recognizer_key, high_quality, train=False)["params"]
    return enhancer_params, recognizer_params


def _module_kwargs(model_config: ml_collections.ConfigDict) -> dict[str, Any]:
  kwargs = {k: v for k, v in model_config.to_dict().items() if k != "name"}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}


def create_system(config: ml_collections.ConfigDict, *, channels: int, num_classes: int,
                  class_weights: tuple[float, ...] | None = None) -> TaskDrivenSystem:
  """The system a config describes, for images with ``channels`` and a task with ``num_classes``.

  ``class_weights`` are the task loss's per-class weights, resolved from ``config.task.class_weights``
  by the caller (``"balanced"`` needs the training split's class counts: ``train.build_system``).
  """
  degradation = degradations.parse_degradation(config.task.degradation)
  # Configs stored before model.dtype / model.remat existed ran float32 without remat.
  precision = {"dtype": jnp.dtype(config.model.get("dtype", "float32")),
               "remat": bool(config.model.get("remat", False))}
  enhancer = models.create_enhancer(config.model.enhancer.name, channels=channels,
                                    scale=degradation.scale, **precision,
                                    **_module_kwargs(config.model.enhancer))
  recognizer = models.create_recognizer(config.model.recognizer.name, num_classes=num_classes,
                                        **precision, **_module_kwargs(config.model.recognizer))
  return TaskDrivenSystem(
      enhancer=enhancer, recognizer=recognizer, degradation=degradation,
      recognition=config.task.recognition, num_classes=num_classes,
      enhancement_loss_kind=config.task.enhancement_loss, ssim_weight=config.task.ssim_weight,
      dice_weight=config.task.dice_weight, label_smoothing=config.task.label_smoothing,
      class_weights=None if class_weights is None else tuple(float(w) for w in class_weights))
