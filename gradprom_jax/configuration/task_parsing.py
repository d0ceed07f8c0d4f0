"""The config's tasks, parsed once into :class:`~gradprom_jax.core.task_config.TaskConfig`: the
only reader of ``config.task``, ``config.task_weight``, the recognisers' ``config.model`` groups and
the per-task gate options.

**One task** (every config but the multi-task ones): ``task.recognition = "segmentation"`` or
``"classification"``, the recogniser in ``model.recognizer``, λ in ``task_weight``, the loss options
in ``task.class_weights`` and the kind's own (``task.dice_weight``, ``task.label_smoothing``:
``TaskKind.loss_options``) and the gate's in
``gradprom.*``. Nothing is renamed: its metrics, results and checkpoints are as they always were.

**Several tasks** (a config with ``model.recognizers``, made by
:func:`gradprom_jax.configuration.config.multitask_config`, e.g. ``configs/ph2.py:multitask``):
``task.recognition`` names them, comma-separated (``"segmentation,classification"``, or a tuple);
each task is named by its recognition kind, so a run has at most one of each. Task ``<task>`` has

* its recogniser in ``model.recognizers.<task>`` (as ``model.recognizer``: a name and its options);
* its options in ``task.<task>``: ``weight`` (λ_k = ``task_weight`` × ``weight``, so a λ sweep over
  ``task_weight`` keeps the tasks' ratio), ``class_weights``, ``dice_weight`` (segmentation) or
  ``label_smoothing`` (classification), and ``gradprom.threshold / mode / granularity /
  task_scale``; any of these left None takes the shared key's value (``task.class_weights``,
  ``task.dice_weight``, ``task.label_smoothing``, ``gradprom.*``).

Tasks the config describes but ``task.recognition`` does not name are left out (e.g.
``configs/ph2.py:multitask --config.task.recognition=classification`` trains the diagnosis alone,
in the multi-task form).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from gradprom_jax.core.degradations import parse_degradation
from gradprom_jax.core.task_config import (GATE_OPTIONS, RecognitionTask, TaskConfig,
                                           TaskConfigError, parse_recognition)
from gradprom_jax.tasks import task_kind


def is_multitask(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config`` is a multi-task config (it has ``model.recognizers``)."""
  return "recognizers" in config.model


def model_options(model: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
  """A model config's constructor options (all but ``name``) as sorted, hashable pairs."""
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
      recognizer_options=model_options(config.model.recognizer),
      task_weight=config.task_weight,
      loss_options=tuple((option.name, config.task[option.name])
                         for option in task_kind(name).loss_options),
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
  allowed = {"weight", "class_weights", "gradprom", *(option.name for option in task_kind(name).loss_options)}
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
      recognizer_options=model_options(recognizers[name]),
      task_weight=float(config.task_weight) * float(weight),
      loss_options=tuple((option.name, inherited(group.get(option.name), config.task[option.name]))
                         for option in task_kind(name).loss_options),
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
  (False, ('segmentation',), {'segmentation': 1.0}, 4)
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
