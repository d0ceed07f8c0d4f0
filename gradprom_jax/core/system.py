"""The task-driven enhancement system: degradation → enhancer → recogniser(s), and their losses.

:class:`TaskDrivenSystem` holds no parameters: it is the static description of the maths (modules,
degradation, loss choices), hashable so that jitted steps can close over it. Parameters live in the
:class:`~gradprom_jax.training.train_state.TrainState`.

One enhancer may feed several recognisers (:class:`RecognitionHead`, one per task: lesion masks and
a diagnosis of the same images). Every per-task thing (params, gradients, optimiser states, losses,
class weights) is a dict by task name, one entry for a single task too. Only the keys users read
depend on the config's form: a single-task run's metrics keep plain keys, a multi-task run's end
in ``/<task>`` (:func:`metric_key`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gradprom_jax import models
from gradprom_jax.core import degradations, losses
from gradprom_jax.core.combiners.tasks import metric_key  # the one place a task's name joins a key
from gradprom_jax.core.task_config import RecognitionTask, TaskConfig
from gradprom_jax.tasks import TaskKind, task_kind
from gradprom_jax.tasks.class_weights import class_weight_sum


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The enhancer and the numerics of every model, as the config names them (``config.model``).

  Attributes:
    enhancer: the enhancer's model name (``models.ENHANCERS``).
    enhancer_options: its constructor's options, as sorted ``(name, value)`` pairs.
    dtype: the compute dtype of every model (``"float32"``, ``"bfloat16"``); params stay float32.
    remat: whether the models recompute activations in the backward pass (memory for time).

  >>> ModelSpec("unet", (("features", 8),)).dtype
  'float32'
  """
  enhancer: str
  enhancer_options: tuple[tuple[str, Any], ...] = ()
  dtype: str = "float32"
  remat: bool = False


@dataclasses.dataclass(frozen=True)
class RecognitionHead:
  """One task's recogniser and its loss; what depends on the task's kind, its kind decides.

  Attributes:
    name: the task's name (suffixes its metrics in a multi-task system).
    module: the recognition module (image → class logits or per-pixel logits).
    recognition: the task's kind, a name of ``tasks.TASK_KINDS``.
    num_classes: classes of the recogniser's output.
    loss_options: the kind's loss options (``TaskKind.loss_options``), as ``(name, value)`` pairs.
    class_weights: the task loss's per-class weights, or None.
  """
  name: str
  module: nn.Module
  recognition: str
  num_classes: int
  loss_options: tuple[tuple[str, Any], ...] = ()
  class_weights: tuple[float, ...] | None = None

  @property
  def kind(self) -> TaskKind:
    return task_kind(self.recognition)

  def recognize(self, params: Any, images: jax.Array, *, train: bool) -> jax.Array:
    return self.module.apply({"params": params}, images, train=train).astype(jnp.float32)

  def loss(self, logits: jax.Array, batch: dict[str, jax.Array],
           normalizer: jax.Array | None = None) -> jax.Array:
    """The task loss; ``normalizer``: the Σ w of a class-weighted loss (``tasks.class_weights``)."""
    weights = None if self.class_weights is None else jnp.asarray(self.class_weights, jnp.float32)
    return self.kind.loss(logits, batch[self.target_key], class_weights=weights,
                          normalizer=normalizer, **dict(self.loss_options))

  def class_weight_sum(self, batch: dict[str, jax.Array]) -> jax.Array | None:
    """Σ w over ``batch``'s targets (pixels for segmentation); None without class weights."""
    return class_weight_sum(batch[self.target_key], self.class_weights)

  def probabilities(self, logits: jax.Array) -> jax.Array:
    """Class probabilities (per pixel for segmentation)."""
    return self.kind.probabilities(logits)

  @property
  def target_key(self) -> str:
    """The batch entry this task is scored against (``"mask"``, ``"label"``)."""
    return self.kind.target_key


@dataclasses.dataclass(frozen=True)
class TaskDrivenSystem:
  """An enhancer feeding one recogniser per task, with the degradation that makes its input.

  Attributes:
    enhancer: the image enhancement module (low quality → high-quality size).
    heads: one :class:`RecognitionHead` per task.
    degradation: simulates the low-quality input from a high-quality batch, on device.
    enhancement_loss_kind, ssim_weight: the enhancement loss (see ``losses.enhancement_loss``).
    multi_task: the config's multi-task form (``model.recognizers``): metric keys end in
      ``/<task>`` and task k's recogniser is initialised with k folded into its key. It names, it
      does not lay out: per-task values are dicts by task name either way.
  """
  enhancer: nn.Module
  heads: tuple[RecognitionHead, ...]
  degradation: degradations.Degradation
  enhancement_loss_kind: str = "l1"
  ssim_weight: float = 0.0
  multi_task: bool = False

  def __post_init__(self):
    if not self.heads or (len(self.heads) > 1 and not self.multi_task):
      raise ValueError(f"a system needs one recogniser, or several with multi_task=True (their "
                       f"keys suffixed); got {len(self.heads)} with multi_task={self.multi_task}.")
    names = [head.name for head in self.heads]
    if len(set(names)) != len(names):
      raise ValueError(f"task names must be distinct, got {names}.")

  # ---- Per-task values are dicts by task name (``{head.name: value}``), one entry for one task.
  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(head.name for head in self.heads)

  def metric_key(self, key: str, head: RecognitionHead) -> str:
    """``key`` of ``head``'s task (:func:`metric_key`)."""
    return metric_key(key, head.name, self.multi_task)

  @property
  def recognition(self) -> str:
    """``task.recognition`` as the config gives it: the kind of a single-task run, the tasks'
    names comma-separated for the multi-task form."""
    return ",".join(self.task_names) if self.multi_task else self.heads[0].recognition

  @property
  def num_classes(self) -> dict[str, int]:
    return {head.name: head.num_classes for head in self.heads}

  def class_weight_sums(self, batch: dict[str, jax.Array]) -> dict[str, Any]:
    """Every task's :meth:`RecognitionHead.class_weight_sum` on ``batch``, by task name."""
    return {head.name: head.class_weight_sum(batch) for head in self.heads}

  # ---- The enhancer and its degradation.
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

  def interpolate(self, low_quality: jax.Array) -> jax.Array:
    """The no-enhancement reference: the degraded input, bicubically upsampled to full size."""
    scale = self.degradation.scale
    return low_quality if scale == 1 else degradations.upsample(low_quality, scale)

  def enhancement_loss(self, enhanced: jax.Array, high_quality: jax.Array) -> jax.Array:
    return losses.enhancement_loss(enhanced, high_quality, kind=self.enhancement_loss_kind,
                                   ssim_weight=self.ssim_weight)

  def init_params(self, key: jax.Array, image_shape: tuple[int, int, int]
                  ) -> tuple[Any, dict[str, Any]]:
    """Initial (enhancer params, ``{task: recogniser params}``) for high-quality images of
    ``image_shape``.

    A single task's recogniser gets the key split off for it, as it always did; task k of the
    multi-task form folds k into that key.
    """
    height, width, channels = image_shape
    scale = self.degradation.scale
    enhancer_key, recognizer_key = jax.random.split(key)
    low_quality = jnp.zeros((1, height // scale, width // scale, channels), jnp.float32)
    high_quality = jnp.zeros((1, height, width, channels), jnp.float32)
    enhancer_params = self.enhancer.init(enhancer_key, low_quality, train=False)["params"]
    keys = ([recognizer_key] if not self.multi_task
            else [jax.random.fold_in(recognizer_key, k) for k in range(len(self.heads))])
    recognizer_params = {head.name: head.module.init(k, high_quality, train=False)["params"]
                         for head, k in zip(self.heads, keys)}
    return enhancer_params, recognizer_params


def _per_task(value: Any, task: RecognitionTask, tasks: TaskConfig) -> Any:
  """A per-task argument of :func:`create_system`: a mapping by task name, or (the public
  convenience of a single task, as ``model_info.json`` stores it) that task's value itself."""
  if isinstance(value, Mapping):
    return value[task.name]
  if len(tasks.tasks) > 1 and value is not None:
    raise ValueError(f"a system of several tasks needs a dict by task name, got {value!r}.")
  return value


def create_system(model: ModelSpec, tasks: TaskConfig, *, channels: int,
                  num_classes: int | Mapping[str, int],
                  class_weights: tuple[float, ...] | Mapping[str, Any] | None = None
                  ) -> TaskDrivenSystem:
  """The system of ``model`` and ``tasks``, for images with ``channels`` and tasks with ``num_classes``.

  ``model`` and ``tasks`` are the config's parsed pieces
  (:func:`gradprom_jax.configuration.run_spec.parse_run_config`). For several tasks
  ``num_classes`` and ``class_weights`` are dicts by task name (one task's may be its value
  itself). ``class_weights`` are the task
  losses' per-class weights, resolved from their config values by the caller (``"balanced"`` needs
  the training split's class counts: ``train.build_system``).

  >>> from gradprom_jax.configuration.config import base_config
  >>> from gradprom_jax.configuration.run_spec import parse_run_config
  >>> spec = parse_run_config(base_config())
  >>> system = create_system(spec.model, spec.tasks, channels=3, num_classes=2)
  >>> system.recognition, system.num_classes, system.degradation.scale
  ('segmentation', {'segmentation': 2}, 4)
  """
  precision = {"dtype": jnp.dtype(model.dtype), "remat": bool(model.remat)}
  enhancer = models.create_enhancer(model.enhancer, channels=channels,
                                    scale=tasks.degradation.scale, **precision,
                                    **dict(model.enhancer_options))
  heads = []
  for task in tasks.tasks:
    classes = _per_task(num_classes, task, tasks)
    weights = _per_task(class_weights, task, tasks)
    heads.append(RecognitionHead(
        name=task.name, recognition=task.recognition, num_classes=classes,
        module=models.create_recognizer(task.recognizer, num_classes=classes, **precision,
                                        **dict(task.recognizer_options)),
        loss_options=task.loss_options,
        class_weights=None if weights is None else tuple(float(w) for w in weights)))
  return TaskDrivenSystem(
      enhancer=enhancer, heads=tuple(heads), degradation=tasks.degradation,
      enhancement_loss_kind=tasks.enhancement_loss, ssim_weight=tasks.ssim_weight,
      multi_task=tasks.multi_task)
