"""Checks a config before anything is built or compiled, with one-line errors that say what to fix.

Two stages: `validate_config` needs only the config and the device count, so it runs before the
workdir is created (once per run, in ``training/experiment.py``'s ``parse_experiment``; its device
part, `check_batch_split`, again once JAX knows the devices); `validate_config_for_dataset` needs
the dataset's image shape (MedMNIST keeps its native size), so it runs on the parsed tasks after the
dataset is opened and still before the workdir is touched.
`unknown_key_message` turns a mistyped ``--config.xxx`` into a line naming the keys near it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence

import ml_collections

from gradprom_jax import methods, models
from gradprom_jax.configuration import config as config_lib
from gradprom_jax.configuration.task_parsing import parse_task_config
from gradprom_jax.core.task_config import RecognitionTask, TaskConfig, TaskConfigError
from gradprom_jax.data import DATASETS
from gradprom_jax.methods.gradprom import check_gate
from gradprom_jax.tasks import task_kind


class ConfigError(ValueError):
  """A config that cannot run; the message names the key and the valid values."""


def _choice(name: str, value, valid) -> None:
  if value not in valid:
    raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, valid))}.")


def _check_training_protocol(config: ml_collections.ConfigDict) -> None:
  """What trains what, and from where: recognizer_only, frozen recognisers, other runs' workdirs."""
  recognizer = config.recognizer
  for key, value in (("recognizer.init_from", recognizer.init_from),
                     ("enhancer.init_from", config.enhancer.init_from),
                     ("judge.workdir", config.judge.workdir)):
    if value is not None and not str(value).strip():
      raise ConfigError(f"{key}={value!r} is empty: give another run's workdir, or leave it unset.")
  if config.method == "recognizer_only":
    if recognizer.frozen:
      raise ConfigError("method=recognizer_only with recognizer.frozen=True would train nothing.")
  elif recognizer.frozen and recognizer.init_from is None:
    raise ConfigError("recognizer.frozen=True would keep the recogniser at its random init: also "
                      "set recognizer.init_from (a recognizer_only run's workdir; pre-train one "
                      "with --config.method=recognizer_only).")


def _check_class_weights(task: RecognitionTask) -> None:
  """A task's class_weights: None, "balanced" (classification) or non-negative weights, not all 0."""
  weights, key = task.class_weights, f"{task.config_prefix}class_weights"
  kind = task_kind(task.recognition)
  if weights is None or weights == "balanced" and kind.balanced_class_weights:
    return
  if weights == "balanced":
    raise ConfigError(f"{key}='balanced' weights image labels (classification only); for "
                      f"{kind.name} give one weight per class, e.g. '(1.0, 3.0)'.")
  numbers = isinstance(weights, (tuple, list)) and all(
      isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w >= 0
      for w in weights)
  if not numbers or not sum(weights) > 0:
    raise ConfigError(f"{key}={weights!r} must be None, 'balanced' or a tuple of "
                      "non-negative weights, one per class, not all 0.")


def _check_method_options(config: ml_collections.ConfigDict, tasks: TaskConfig) -> None:
  """Every registered method's group (each method checks its own), and GradProm's gate options of
  each task of a multi-task config (a single task's are the shared keys, checked with them)."""
  try:
    for method in methods.combination_methods():
      method.check_options(config[method.name] if method.options is not None else {})
    for task in tasks.tasks if tasks.multi_task else ():
      check_gate(dict(task.gate), f"{task.config_prefix}gradprom.")
  except methods.OptionError as e:
    raise ConfigError(str(e)) from None


def parse_tasks(config: ml_collections.ConfigDict) -> TaskConfig:
  """The config's parsed tasks (:func:`~gradprom_jax.configuration.task_parsing.parse_task_config`),
  a parse error as a :class:`ConfigError`."""
  try:
    return parse_task_config(config)
  except TaskConfigError as e:
    raise ConfigError(str(e)) from None


def _check_optimizer_extras(config: ml_collections.ConfigDict) -> None:
  """The parameter average, the weight-decay mask and the best-on-validation checkpoint."""
  _choice("optim.weight_decay_mask", config.optim.weight_decay_mask, config_lib.WEIGHT_DECAY_MASKS)
  decay = config.optim.ema_decay
  if decay is not None and not 0 <= decay < 1:
    raise ConfigError(f"optim.ema_decay={decay} must be in [0, 1), e.g. 0.999 (None or 0: off).")
  metric = config.checkpoint_best_metric
  if metric is not None and not metric.lstrip("-").strip():
    raise ConfigError(f"checkpoint_best_metric={metric!r} names no metric: give a validation key "
                      "such as 'psnr', 'dice' or 'auc' ('-' prefix: lower is better), or None.")
  if config.test_on_best and metric is None:
    raise ConfigError("test_on_best=True needs checkpoint_best_metric (e.g. 'psnr'): which "
                      "validation metric picks the best checkpoint?")


def check_batch_split(batch_size: int, accumulate_steps: int, num_devices: int) -> None:
  """Raises :class:`ConfigError` unless the global batch splits evenly over ``num_devices``
  devices and each device's share into ``accumulate_steps`` micro-batches."""
  if batch_size % num_devices:
    raise ConfigError(f"batch_size={batch_size} is not divisible by the number of devices "
                      f"({num_devices}).")
  if batch_size % (num_devices * accumulate_steps):
    raise ConfigError(f"accumulate_steps={accumulate_steps}: batch_size={batch_size} "
                      f"does not split into {accumulate_steps} equal micro-batches on each "
                      f"of {num_devices} devices; make batch_size a multiple of "
                      f"{num_devices * accumulate_steps}.")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> TaskConfig:
  """Raises :class:`ConfigError` if ``config`` cannot run on ``num_devices`` devices; returns its
  parsed tasks (:class:`~gradprom_jax.core.task_config.TaskConfig`), which the layers below receive.

  >>> from gradprom_jax.configuration.config import base_config
  >>> config = base_config()
  >>> validate_config(config, num_devices=4).names
  ('segmentation',)
  >>> config.batch_size = 6
  >>> validate_config(config, num_devices=4)
  Traceback (most recent call last):
  ...
  gradprom_jax.configuration.config_validation.ConfigError: batch_size=6 is not divisible by the number of devices (4).
  """
  _choice("method", config.method, methods.method_names())
  _choice("data.name", config.data.name, tuple(DATASETS))
  try:
    DATASETS[config.data.name].check_config(config.data)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _choice("model.enhancer.name", config.model.enhancer.name, tuple(models.ENHANCERS))
  tasks = parse_tasks(config)
  for task in tasks.tasks:
    _choice(f"{task.model_key}.name", task.recognizer, tuple(models.RECOGNIZERS))
  _choice("distributed.mode", config.distributed.mode, config_lib.DISTRIBUTED_MODES)
  _choice("parallel", config.parallel, config_lib.PARALLEL_MODES)
  _choice("recognizer.train_on", config.recognizer.train_on, config_lib.RECOGNIZER_INPUTS)
  _choice("model.dtype", config.model.dtype, config_lib.MODEL_DTYPES)
  for key in ("num_train_steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints", "max_nonfinite_steps", "accumulate_steps",
              "preemption_check_every"):
    if not isinstance(config[key], int) or config[key] < 1:
      raise ConfigError(f"{key}={config[key]!r} must be a positive integer.")
  for key in ("prefetch", "num_workers"):
    if not isinstance(config.data[key], int) or config.data[key] < 0:
      raise ConfigError(f"data.{key}={config.data[key]!r} must be a non-negative integer.")
  if not isinstance(config.data.read_buffer, int) or config.data.read_buffer < 1:
    raise ConfigError(f"data.read_buffer={config.data.read_buffer!r} must be a positive integer.")
  check_batch_split(config.batch_size, config.accumulate_steps, num_devices)
  if config.task_weight < 0:
    raise ConfigError(f"task_weight={config.task_weight} must be >= 0.")
  _check_training_protocol(config)
  for task in tasks.tasks:
    _check_class_weights(task)
  _check_method_options(config, tasks)
  _check_optimizer_extras(config)
  if not isinstance(config.gate_reliability_every, int) or config.gate_reliability_every < 0:
    raise ConfigError(f"gate_reliability_every={config.gate_reliability_every!r} must be a "
                      "non-negative integer (0: off).")
  degradation = tasks.degradation
  for key in ("image_size", "patch_size"):
    size = config.data[key]
    if size is not None:
      try:
        degradation.check_image_size(*size)
      except ValueError as e:
        raise ConfigError(f"data.{key}={tuple(size)}: {e}") from None
  _check_models(config, tasks)
  return tasks


# Constructor arguments the training system fills in itself (from the data and the degradation).
# dtype and remat come from model.dtype and model.remat, for both models at once.
_SYSTEM_SUPPLIED = {"enhancer": {"channels", "scale", "dtype", "remat"},
                    "recognizer": {"num_classes", "dtype", "remat"}}


def _check_models(config: ml_collections.ConfigDict, tasks: TaskConfig) -> None:
  """The models fit the tasks and the degradation, and take every option the config gives them.

  Each model class declares what it can do: recognisers their ``logits_per`` (an image or a pixel,
  matched to the task kind's), enhancers ``check_scale`` (which super-resolution factors they can
  make).
  """
  for task in tasks.tasks:
    recognizer = models.RECOGNIZERS[task.recognizer]
    kind = task_kind(task.recognition)
    if recognizer.logits_per != kind.logits_per:
      fitting = [name for name, cls in models.RECOGNIZERS.items()
                 if cls.logits_per == kind.logits_per]
      needs = (f"needs a model with logits per {kind.logits_per} ({' or '.join(fitting)}), but "
               f"{task.model_key}.name={task.recognizer!r} gives logits per "
               f"{recognizer.logits_per}")
      if tasks.multi_task:
        raise ConfigError(f"task {task.name!r} {needs}.")
      raise ConfigError(
          f"task.recognition={config.task.recognition!r} {needs}: start from a config for "
          f"{kind.name} (a config file's default or its ':{kind.name}' option, e.g. "
          "configs/image_folder.py:classification), which sets the task and its model together, "
          "rather than changing one of them on the command line.")
    options = {f.name for f in dataclasses.fields(recognizer) if f.init} - {"parent", "name"}
    options -= _SYSTEM_SUPPLIED["recognizer"]
    for key, _ in task.recognizer_options:
      if key not in options:
        raise ConfigError(
            f"{task.model_key}.{key} is not an option of recognizer {task.recognizer!r} (its "
            f"options: {', '.join(sorted(options))}); start from a config whose "
            f"{task.model_key} is {task.recognizer!r} rather than renaming the model on the "
            "command line.")
  enhancer = models.ENHANCERS[config.model.enhancer.name]
  try:
    enhancer.check_scale(tasks.degradation.scale)
  except ValueError as e:
    raise ConfigError(f"model.enhancer.name={config.model.enhancer.name!r} cannot enhance "
                      f"task.degradation={config.task.degradation!r}: {e}.") from None
  options = {f.name for f in dataclasses.fields(enhancer) if f.init} - {"parent", "name"}
  options -= _SYSTEM_SUPPLIED["enhancer"]
  for key in config.model.enhancer:
    if key != "name" and key not in options:
      raise ConfigError(
          f"model.enhancer.{key} is not an option of enhancer {config.model.enhancer.name!r} (its "
          f"options: {', '.join(sorted(options))}); start from a config whose model.enhancer is "
          f"{config.model.enhancer.name!r} rather than renaming the model on the command line.")


def check_dataset_has_targets(tasks: TaskConfig, dataset) -> None:
  """Every task's targets are in the dataset: masks for segmentation, labels for classification.

  The input pipeline delivers every target the dataset holds (``mask`` and ``label`` together for
  PH2, the synthetic lesions, an image folder with both), so several tasks train on one batch.
  """
  for task in tasks.tasks:
    kind = task_kind(task.recognition)
    if not kind.has_targets(dataset):
      raise ConfigError(f"task {task.name!r} needs {kind.targets_description}, but dataset "
                        f"{dataset.name!r} (as "
                        "data.* configures it) has none; choose another dataset or task.")


def validate_config_for_dataset(tasks: TaskConfig, image_shape: Sequence[int],
                                class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                                *, image_size: Sequence[int] | None,
                                patch_size: Sequence[int] | None) -> None:
  """Raises :class:`ConfigError` if the config (its parsed ``tasks``, ``data.image_size`` and
  ``data.patch_size``) cannot train on images of ``image_shape`` (H, W, C).

  Catches what `validate_config` cannot see: a dataset kept at its native size (``image_size=None``)
  that the super-resolution scale does not divide, and ``task.class_weights`` of another length
  than the recogniser's ``class_names`` (for several tasks, a dict of each task's by name).

  >>> from gradprom_jax.configuration.config import base_config
  >>> config = base_config()
  >>> config.task.degradation = "downsample(scale=3)"
  >>> validate_config_for_dataset(parse_tasks(config), (28, 28, 1), image_size=None, patch_size=None)
  Traceback (most recent call last):
  ...
  gradprom_jax.configuration.config_validation.ConfigError: data.image_size=(28, 28) (the dataset's native size): degradation 'downsample(scale=3)' has scale 3, which does not divide the image size 28x28
  """
  degradation = tasks.degradation
  height, width = image_shape[:2]
  sizes = {"data.image_size": ((height, width), " (the dataset's native size)"
                               if image_size is None else "")}
  if patch_size is not None:
    sizes["data.patch_size"] = (tuple(patch_size), "")
  for key, (size, note) in sizes.items():
    try:
      degradation.check_image_size(*size)
    except ValueError as e:
      raise ConfigError(f"{key}={tuple(size)}{note}: {e}") from None
  for task in tasks.tasks:
    weights = task.class_weights
    names = class_names[task.name] if isinstance(class_names, Mapping) else class_names
    if names is not None and isinstance(weights, (tuple, list)) and len(weights) != len(names):
      raise ConfigError(f"{task.config_prefix}class_weights={tuple(weights)} has {len(weights)} "
                        f"weights but the recogniser has {len(names)} classes: {', '.join(names)}.")


def unknown_key_message(config: ml_collections.ConfigDict, dotted_key: str) -> str | None:
  """A one-line error for ``--config.<dotted_key>`` if the key does not exist, else None.

  Names the first unknown part, its close matches and the keys that do exist at that level.

  >>> from gradprom_jax.configuration.config import base_config
  >>> print(unknown_key_message(base_config(), "optim.enhancer_rl"))
  unknown config key 'optim.enhancer_rl': did you mean 'optim.enhancer_lr'? Keys of 'optim': clip_norm, ema_decay, enhancer_lr, recognizer_lr, warmup_steps, weight_decay, weight_decay_mask
  >>> unknown_key_message(base_config(), "optim.enhancer_lr") is None
  True
  """
  node, parents = config, []
  for part in dotted_key.split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return (f"unknown config key {dotted_key!r}: {'.'.join(parents)!r} is a value, "
              "not a group of keys")
    if part not in node:
      keys = sorted(node.keys())
      prefix = "".join(f"{p}." for p in parents)
      near = difflib.get_close_matches(part, keys, n=3)
      guess = (f"did you mean {' or '.join(repr(prefix + k) for k in near)}? " if near
               else "")
      where = f"Keys of {'.'.join(parents)!r}" if parents else "Top-level keys"
      return f"unknown config key {dotted_key!r}: {guess}{where}: {', '.join(keys)}"
    node, parents = node[part], parents + [part]
  return None
