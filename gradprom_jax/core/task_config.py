"""The run's tasks as typed pieces: the degradation, the enhancement loss and one
:class:`RecognitionTask` per downstream task (its recogniser, loss options, λ_k and gate options).

Lower layers (the system, the train step, the combiner, the evaluation) receive these typed pieces;
only :func:`gradprom_jax.configuration.task_parsing.parse_task_config` reads them from the config
(``config.task``, ``config.task_weight``, the recognisers' ``config.model`` groups and the per-task
gate options), whose docstring describes the config's one- and several-task forms.

**Keys of a multi-task run**: every per-task value is the key a single-task run writes, then
``/<task>`` — ``dice/segmentation``, ``no_enhancement_accuracy/classification``,
``judge_dice/segmentation`` (results.json and validation records), ``task_loss/classification``,
``task_grad_norm/segmentation``, ``cosine/segmentation``, ``gate_open_rate/classification`` (train
records). Values shared by the tasks (``psnr``, ``ssim``, ``enhancement_loss``, learning rates) keep
their plain keys. The train state keeps one recogniser per task, in either form:
``recognizer_params`` and ``recognizer_opt_state`` are dicts by task name.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from gradprom_jax.core.degradations import Degradation
from gradprom_jax.tasks import TASK_KINDS

# GradProm's options that may differ per task (combiner arguments of the same name).
GATE_OPTIONS = ("threshold", "mode", "granularity", "task_scale")


class TaskConfigError(ValueError):
  """The config's tasks cannot be parsed; the message names the key (a ConfigError in validation)."""


@dataclasses.dataclass(frozen=True)
class RecognitionTask:
  """One downstream task of the enhancer, as the config describes it (before the data is seen).

  Attributes:
    name: the task's name (its recognition kind); suffixes its keys in a multi-task run.
    recognition: its kind, a name of ``tasks.TASK_KINDS``.
    recognizer: the recogniser's model name (``models.RECOGNIZERS``).
    recognizer_options: its constructor's options, as sorted ``(name, value)`` pairs.
    task_weight: λ_k, the weight of this task's gradient in the enhancer's update.
    loss_options: the values of its kind's loss options (``TaskKind.loss_options``), as
      ``(name, value)`` pairs in the kind's order.
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
  loss_options: tuple[tuple[str, Any], ...] = ()
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
    multi_task: the multi-task form (``model.recognizers``): its keys end in ``/<task>``, even for
      one task. False: the classic single-task form, plain keys. Per-task values (params,
      optimiser states, λ) are dicts by task name in both.
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
  def task_weight(self) -> dict[str, float]:
    """λ as the train step takes it: ``{task: λ_k}``."""
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
  kinds = tuple(TASK_KINDS)   # read at each call: a kind registered later counts
  names = ([part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str)
           else [str(part).strip() for part in value] if isinstance(value, (tuple, list)) else None)
  if not names:
    raise TaskConfigError(f"task.recognition={value!r} names no task: give one of "
                          f"{', '.join(kinds)}, or several comma-separated.")
  for name in names:
    if name not in TASK_KINDS:
      if len(names) == 1:
        raise TaskConfigError(f"task.recognition={value!r} is not one of "
                              f"{', '.join(kinds)}.")
      raise TaskConfigError(f"task.recognition={value!r}: {name!r} is not one of "
                            f"{', '.join(kinds)}.")
  if len(set(names)) != len(names):
    raise TaskConfigError(f"task.recognition={value!r} names a task twice; each recognition kind "
                          "is one task.")
  return tuple(names)
