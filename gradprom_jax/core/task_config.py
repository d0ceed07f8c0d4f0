"""The run's tasks, parsed once from the config: the degradation, the enhancement loss and one
:class:`RecognitionTask` per downstream task (its recogniser, loss options, λ_k and gate options).

Lower layers (the system, the train step, the combiner, the evaluation) receive these typed pieces;
only :func:`parse_task_config` reads ``config.task``, ``config.task_weight``, the recognisers'
``config.model`` groups and the per-task gate options.

**One task** (every config but the multi-task ones): ``task.recognition = "segmentation"`` or
``"classification"``, the recogniser in ``model.recognizer``, λ in ``task_weight``, the loss options
in ``task.dice_weight``, ``task.label_smoothing``, ``task.class_weights`` and the gate's in
``gradprom.*``. Nothing is renamed: its metrics, results and checkpoints are as they always were.

**Several tasks** (a config with ``model.recognizers``, made by
:func:`gradprom_jax.configuration.config.multitask_config`, e.g. ``configs/ph2.py:multitask``): ``task.recognition``
names them, comma-separated (``"segmentation,classification"``, or a tuple); each task is named by
its recognition kind, so a run has at most one of each. Task ``<task>`` has

* its recogniser in ``model.recognizers.<task>`` (as ``model.recognizer``: a name and its options);
* its options in ``task.<task>``: ``weight`` (λ_k = ``task_weight`` × ``weight``, so a λ sweep over
  ``task_weight`` keeps the tasks' ratio), ``class_weights``, ``dice_weight`` (segmentation) or
  ``label_smoothing`` (classification), and ``gradprom.threshold / mode / granularity /
  task_scale``; any of these left None takes the shared key's value (``task.class_weights``,
  ``task.dice_weight``, ``task.label_smoothing``, ``gradprom.*``).

Tasks the config describes but ``task.recognition`` does not name are left out (e.g.
``configs/ph2.py:multitask --config.task.recognition=classification`` trains the diagnosis alone,
in the multi-task form).

**Keys of a multi-task run**: every per-task value is the key a single-task run writes, then
``/<task>`` — ``dice/segmentation``, ``no_enhancement_accuracy/classification``,
``judge_dice/segmentation`` (results.json and validation records), ``task_loss/classification``,
``task_grad_norm/segmentation``, ``cosine/segmentation``, ``gate_open_rate/classification`` (train
records). Values shared by the tasks (``psnr``, ``ssim``, ``enhancement_loss``, learning rates) keep
their plain keys. The train state keeps one recogniser per task: ``recognizer_params`` and
``recognizer_opt_state`` are dicts by task name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from gradprom_jax.core.degradations import Degradation, parse_degradation

RECOGNITION_KINDS = ("segmentation", "classification")
# GradProm's options that may differ per task (combiner arguments of the same name).
GATE_OPTIONS = ("threshold", "mode", "granularity", "task_scale")
# The loss option of each recognition kind (besides class_weights, which both have).
KIND_LOSS_OPTIONS = {"segmentation": "dice_weight", "classification": "label_smoothing"}
# The keys a task's group (task.<task>) may hold.
TASK_GROUP_KEYS = ("weight", "class_weights", "gradprom", *KIND_LOSS_OPTIONS.values())


class TaskConfigError(ValueError):
  """The config's tasks cannot be parsed; the message names the key (a ConfigError in validation)."""


@dataclasses.dataclass(frozen=True)
class RecognitionTask:
  """One downstream task of the enhancer, as the config describes it (before the data is seen).

  Attributes:
    name: the task's name (its recognition kind); suffixes its keys in a multi-task run.
    recognition: ``"segmentation"`` or ``"classification"``.
    recognizer: the recogniser's model name (``models.RECOGNIZERS``).
    recognizer_options: its constructor's options, as sorted ``(name, value)`` pairs.
    task_weight: λ_k, the weight of this task's gradient in the enhancer's update.
    dice_weight, label_smoothing: the task loss's options (``losses``).
    class_weights: None, ``"balanced"`` (from the training split's class counts) or one per class.
    gate: GradProm's options for this task, as sorted ``(option, value)`` pairs (:data:`GATE_OPTIONS`).
    config_prefix: where the task's options live in the config: ``"task."`` (one task) or
      ``"task.<name>."``; error messages name keys with it.
    model_key: the config key of its recogniser (``model.recognizer`` or ``model.recognizers.<name>``).
  """
  name: str
  recognition: str
  recognizer: str
  recognizer_options: tuple[tuple[str, Any], ...]
  task_weight: float
  dice_weight: float = 1.0
  label_smoothing: float = 0.0
  class_weights: str | tuple[float, ...] | None = None
  gate: tuple[tuple[str, Any], ...] = ()
  config_prefix: str = "task."
  model_key: str = "model.recognizer"

  def gate_option(self, option: str) -> Any:
    return dict(self.gate)[option]


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Everything the config says about what the system learns.

  Attributes:
    degradation: the parsed ``task.degradation``.
    enhancement_loss, ssim_weight: the enhancement loss (``losses.enhancement_loss``).
    tasks: one :class:`RecognitionTask` per downstream task, in ``task.recognition``'s order.
    multi_task: the multi-task form (``model.recognizers``): per-task params, optimisers and keys,
      even for one task. False: the classic single-task form.
  """
  degradation: Degradation
  enhancement_loss: str
  ssim_weight: float
  tasks: tuple[RecognitionTask, ...]
  multi_task: bool

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(task.name for task in self.tasks)

  @property
  def task_weight(self) -> float | dict[str, float]:
    """λ as the train step takes it: one number for a single task, ``{task: λ_k}`` for several."""
    if not self.multi_task:
      return self.tasks[0].task_weight
    return {task.name: task.task_weight for task in self.tasks}

  def task(self, name: str) -> RecognitionTask:
    return next(task for task in self.tasks if task.name == name)


def parse_recognition(value: Any) -> tuple[str, ...]:
  """The task names ``task.recognition`` gives: one name, comma-separated names, or a tuple.

  >>> parse_recognition("segmentation"), parse_recognition(" segmentation , classification ")
  (('segmentation',), ('segmentation', 'classification'))
  >>> parse_recognition(("classification",))
  ('classification',)
  >>> parse_recognition("segmentation,detection")
  Traceback (most recent call last):
  ...
  gradprom_jax.core.task_config.TaskConfigError: task.recognition='segmentation,detection': 'detection' is not one of segmentation, classification.
  """
  names = ([part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str)
           else [str(part).strip() for part in value] if isinstance(value, (tuple, list)) else None)
  if not names:
    raise TaskConfigError(f"task.recognition={value!r} names no task: give one of "
                          f"{', '.join(RECOGNITION_KINDS)}, or several comma-separated.")
  for name in names:
    if name not in RECOGNITION_KINDS:
      if len(names) == 1:
        raise TaskConfigError(f"task.recognition={value!r} is not one of "
                              f"{', '.join(RECOGNITION_KINDS)}.")
      raise TaskConfigError(f"task.recognition={value!r}: {name!r} is not one of "
                            f"{', '.join(RECOGNITION_KINDS)}.")
  if len(set(names)) != len(names):
    raise TaskConfigError(f"task.recognition={value!r} names a task twice; each recognition kind "
                          "is one task.")
  return tuple(names)


def is_multitask(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config`` is a multi-task config (it has ``model.recognizers``)."""
  return "recognizers" in config.model


def _model_options(model: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
  items = model.to_dict().items() if hasattr(model, "to_dict") else model.items()
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in items if k != "name"))


def _class_weights(value: Any) -> str | tuple[float, ...] | None:
  if value is None or isinstance(value, str):
    return value
  return tuple(value) if isinstance(value, (tuple, list)) else value


def _single_task(config: ml_collections.ConfigDict, name: str) -> RecognitionTask:
  """The classic single-task form: every option from its shared key."""
  return RecognitionTask(
      name=name, recognition=name, recognizer=config.model.recognizer.name,
      recognizer_options=_model_options(config.model.recognizer),
      task_weight=config.task_weight, dice_weight=config.task.dice_weight,
      label_smoothing=config.task.label_smoothing,
      class_weights=_class_weights(config.task.class_weights),
      gate=tuple(sorted((option, config.gradprom[option]) for option in GATE_OPTIONS)))


def _task_of_several(config: ml_collections.ConfigDict, name: str) -> RecognitionTask:
  """Task ``name`` of a multi-task config: ``model.recognizers.<name>`` and ``task.<name>``."""
  recognizers = config.model.recognizers
  if name not in recognizers:
    raise TaskConfigError(
        f"task.recognition names {name!r}, but model.recognizers has no recogniser for it (it has "
        f"{', '.join(sorted(recognizers)) or 'none'}): add model.recognizers.{name}, e.g. with "
        "gradprom_jax.configuration.config.multitask_config.")
  group = config.task.get(name) or ml_collections.ConfigDict()
  if not isinstance(group, ml_collections.ConfigDict):
    raise TaskConfigError(f"task.{name}={group!r} must be a group of the task's options.")
  allowed = {"weight", "class_weights", "gradprom", KIND_LOSS_OPTIONS[name]}
  for key in group:
    if key not in allowed:
      raise TaskConfigError(f"task.{name}.{key} is not an option of a {name} task (its options: "
                            f"{', '.join(sorted(allowed))}).")
  gate_overrides = group.get("gradprom") or {}
  for key in gate_overrides:
    if key not in GATE_OPTIONS:
      raise TaskConfigError(f"task.{name}.gradprom.{key} is not a per-task gate option (those are: "
                            f"{', '.join(GATE_OPTIONS)}).")

  def inherited(value, shared):
    return shared if value is None else value

  weight = inherited(group.get("weight"), 1.0)
  if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
    raise TaskConfigError(f"task.{name}.weight={weight!r} must be a number >= 0 "
                          "(λ_k = task_weight × weight).")
  return RecognitionTask(
      name=name, recognition=name, recognizer=recognizers[name].get("name"),
      recognizer_options=_model_options(recognizers[name]),
      task_weight=float(config.task_weight) * float(weight),
      dice_weight=inherited(group.get("dice_weight"), config.task.dice_weight),
      label_smoothing=inherited(group.get("label_smoothing"), config.task.label_smoothing),
      class_weights=_class_weights(inherited(group.get("class_weights"), config.task.class_weights)),
      gate=tuple(sorted((option, inherited(gate_overrides.get(option), config.gradprom[option]))
                        for option in GATE_OPTIONS)),
      config_prefix=f"task.{name}.", model_key=f"model.recognizers.{name}")


def parse_task_config(config: ml_collections.ConfigDict) -> TaskConfig:
  """The tasks ``config`` describes (see the module docstring), parsed and checked for form.

  Value ranges (class weights, gate options, whether each model fits its task) are checked by
  ``config_validation.validate_config`` on the parsed tasks.

  >>> from gradprom_jax.configuration.config import base_config, multitask_config, classification_recognizer
  >>> config = base_config()
  >>> parsed = parse_task_config(config)
  >>> parsed.multi_task, parsed.names, parsed.task_weight, parsed.degradation.scale
  (False, ('segmentation',), 1.0, 4)
  >>> config = multitask_config(base_config(), {"segmentation": config.model.recognizer,
  ...                                          "classification": classification_recognizer()})
  >>> config.task_weight, config.task.classification.weight = 0.5, 0.2
  >>> parse_task_config(config).task_weight
  {'segmentation': 0.5, 'classification': 0.1}
  """
  names = parse_recognition(config.task.recognition)
  try:
    degradation = parse_degradation(config.task.degradation)
  except ValueError as e:
    raise TaskConfigError(f"task.degradation={config.task.degradation!r}: {e}") from None
  multi_task = is_multitask(config)
  if not multi_task and len(names) > 1:
    raise TaskConfigError(
        f"task.recognition={config.task.recognition!r} names {len(names)} tasks, but this config "
        "has one recogniser (model.recognizer): use a multi-task config (e.g. "
        "configs/ph2.py:multitask), which gives each task its recogniser under "
        "model.recognizers.<task> and its options under task.<task>.")
  tasks = tuple(_task_of_several(config, name) if multi_task else _single_task(config, name)
                for name in names)
  return TaskConfig(degradation=degradation, enhancement_loss=config.task.enhancement_loss,
                    ssim_weight=config.task.ssim_weight, tasks=tasks, multi_task=multi_task)


def suffixed(key: str, task: str | None) -> str:
  """A per-task key: ``key`` for a single-task run (``task`` None), else ``key/<task>``.

  >>> suffixed("dice", None), suffixed("no_enhancement_dice", "segmentation")
  ('dice', 'no_enhancement_dice/segmentation')
  """
  return key if task is None else f"{key}/{task}"
