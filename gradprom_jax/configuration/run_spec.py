"""The config, read once: :func:`parse_run_config` turns the ConfigDict into the typed pieces the
lower layers take, so that no module below this one reads a config key.

Each piece is defined in the layer that consumes it: the models (:class:`~gradprom_jax.core.system.
ModelSpec`) and the tasks and degradation (:class:`~gradprom_jax.core.task_config.TaskConfig`) in
``core``, the method with its combiner's arguments resolved
(:class:`~gradprom_jax.methods.MethodChoice`) in ``methods``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from gradprom_jax.configuration.task_parsing import model_options, parse_task_config
from gradprom_jax.core.system import ModelSpec, TaskDrivenSystem, create_system
from gradprom_jax.core.task_config import TaskConfig
from gradprom_jax.methods import Method, MethodChoice, lookup


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """The typed pieces of one run's config.

  Attributes:
    model: the enhancer and the models' numerics.
    tasks: the degradation, the enhancement loss and the recognition tasks.
    method: the method and its combiner's keyword arguments.
  """
  model: ModelSpec
  tasks: TaskConfig
  method: MethodChoice


def parse_model_spec(config: ml_collections.ConfigDict) -> ModelSpec:
  """``config.model``'s enhancer and numerics.

  >>> from gradprom_jax.configuration.config import base_config
  >>> config = base_config()
  >>> config.model.dtype = "bfloat16"
  >>> spec = parse_model_spec(config)
  >>> spec.enhancer, spec.dtype, spec.remat
  ('edsr', 'bfloat16', False)
  """
  enhancer = config.model.enhancer
  options = model_options(enhancer)
  return ModelSpec(enhancer=enhancer.name, enhancer_options=options, dtype=str(config.model.dtype),
                   remat=bool(config.model.remat))


def _config_value(config: ml_collections.ConfigDict, dotted_key: str) -> Any:
  value = config
  for part in dotted_key.split("."):
    value = value[part]
  return value


def combiner_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments ``config.method``'s combiner factory is called with, read from ``config``
  through its :class:`~gradprom_jax.methods.Method`'s ``combiner_args`` (none for a schedule).

  >>> from gradprom_jax.configuration.config import base_config
  >>> config = base_config()
  >>> config.gradprom.threshold = 0.2
  >>> combiner_kwargs(config)["threshold"]
  0.2
  >>> config.method = "random_gate"
  >>> combiner_kwargs(config)
  {'task_weight': 1.0, 'seed': 0, 'open_rate': 0.5}
  """
  method = lookup(config.method)
  if not isinstance(method, Method):
    return {}
  return {argument: _config_value(config, key) for argument, key in method.combiner_args.items()}


def parse_method(config: ml_collections.ConfigDict) -> MethodChoice:
  """``config.method`` with its combiner's keyword arguments (:func:`combiner_kwargs`).

  >>> from gradprom_jax.configuration.config import base_config
  >>> choice = parse_method(base_config())
  >>> choice.name, choice.combiner_kwargs["mode"]
  ('gradprom', 'hard')
  """
  return MethodChoice(lookup(config.method), combiner_kwargs(config))


def parse_run_config(config: ml_collections.ConfigDict, tasks: TaskConfig | None = None) -> RunSpec:
  """Every typed piece of ``config`` (see the module docstring); errors name the config key.
  ``tasks``: its tasks when already parsed (else parsed here).

  >>> from gradprom_jax.configuration.config import base_config
  >>> spec = parse_run_config(base_config())
  >>> spec.model.enhancer, spec.tasks.names, spec.method.name
  ('edsr', ('segmentation',), 'gradprom')
  """
  return RunSpec(model=parse_model_spec(config),
                 tasks=parse_task_config(config) if tasks is None else tasks,
                 method=parse_method(config))


def system_from_config(config: ml_collections.ConfigDict, *, channels: int,
                       num_classes: int | Mapping[str, int],
                       class_weights: tuple[float, ...] | Mapping[str, Any] | None = None,
                       tasks: TaskConfig | None = None) -> TaskDrivenSystem:
  """The system ``config`` describes (:func:`~gradprom_jax.core.system.create_system` of its parsed
  model and tasks; ``tasks`` when already parsed), for images with ``channels``.

  >>> from gradprom_jax.configuration.config import base_config
  >>> system_from_config(base_config(), channels=3, num_classes=2).num_classes
  {'segmentation': 2}
  """
  tasks = parse_task_config(config) if tasks is None else tasks
  return create_system(parse_model_spec(config), tasks, channels=channels,
                       num_classes=num_classes, class_weights=class_weights)
