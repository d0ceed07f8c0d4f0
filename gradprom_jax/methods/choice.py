"""The run's method, read from the config once (:class:`MethodChoice`), and its combiner built."""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Mapping

import optax

from gradprom_jax.core.task_config import GATE_OPTIONS, TaskConfig
from gradprom_jax.methods.method import EnhancerGradient, Method
from gradprom_jax.methods.schedules import Schedule


@dataclasses.dataclass(frozen=True)
class MethodChoice:
  """The run's method and the keyword arguments of its combiner (single-task form; one value per
  argument), read from the config by ``gradprom_jax.configuration.run_spec.parse_method``.

  >>> from gradprom_jax.methods import lookup
  >>> choice = MethodChoice(lookup("gradprom"), {"task_weight": 0.5, "threshold": 0.1})
  >>> choice.name, choice.combiner_kwargs["threshold"]
  ('gradprom', 0.1)
  """
  spec: Method | Schedule
  combiner_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    accepted = self.spec.combiner_args if isinstance(self.spec, Method) else {}
    unknown = set(self.combiner_kwargs) - set(accepted)
    if unknown:
      raise ValueError(f"{self.spec.name}: combiner arguments {sorted(unknown)} are not among "
                       f"its combiner_args {sorted(accepted)}.")
    object.__setattr__(self, "combiner_kwargs", types.MappingProxyType(dict(self.combiner_kwargs)))

  @property
  def name(self) -> str:
    return self.spec.name


def multitask_combiner_kwargs(kwargs: Mapping[str, Any], tasks: TaskConfig) -> dict[str, Any]:
  """``kwargs`` of a combiner built for ``tasks`` (one or several): ``tasks=`` their names, and each
  per-task option (λ_k; GradProm's gate options) as a dict by task name, from the parsed tasks.

  >>> from gradprom_jax.configuration.config import base_config, classification_recognizer, multitask_config
  >>> from gradprom_jax.configuration.run_spec import parse_run_config
  >>> config = multitask_config(base_config(), {"segmentation": base_config().model.recognizer,
  ...                                          "classification": classification_recognizer()})
  >>> config.task.classification.weight, config.task.classification.gradprom.threshold = 0.5, 0.1
  >>> spec = parse_run_config(config)
  >>> kwargs = multitask_combiner_kwargs(spec.method.combiner_kwargs, spec.tasks)
  >>> kwargs["tasks"], kwargs["task_weight"], kwargs["threshold"], kwargs["mode"]
  (('segmentation', 'classification'), {'segmentation': 1.0, 'classification': 0.5}, {'segmentation': 0.0, 'classification': 0.1}, 'hard')
  """
  kwargs = dict(kwargs, tasks=tasks.names)
  for argument in kwargs:
    if argument == "task_weight":
      kwargs[argument] = {task.name: task.task_weight for task in tasks.tasks}
    elif argument in GATE_OPTIONS:
      values = {task.name: task.gate_option(argument) for task in tasks.tasks}
      # One value when every task has the same (the combiner takes either form).
      kwargs[argument] = (values if len(set(map(repr, values.values()))) > 1
                          else next(iter(values.values())))
  return kwargs


def build_combiner(choice: MethodChoice,
                   tasks: TaskConfig | None = None) -> optax.GradientTransformationExtraArgs:
  """``choice``'s combiner, called with its resolved keyword arguments.

  With ``tasks`` (the config's parsed tasks; the train step's form) the combiner is built for their
  names (``task_grads`` a dict by task name, one entry for one task) with per-task options from
  ``tasks``; without, for one task given as one tree (the combiners' classic form).

  >>> from gradprom_jax.methods import lookup
  >>> tx = build_combiner(MethodChoice(lookup("pcgrad"), {"task_weight": 0.5}))
  >>> isinstance(tx, optax.GradientTransformationExtraArgs)
  True
  >>> build_combiner(MethodChoice(lookup("two_stage")))
  Traceback (most recent call last):
  ...
  ValueError: Method 'two_stage' is a schedule, without a combiner.
  """
  if not isinstance(choice.spec, Method):
    raise ValueError(f"Method {choice.name!r} is a schedule, without a combiner.")
  kwargs = dict(choice.combiner_kwargs)
  if tasks is not None:
    kwargs = multitask_combiner_kwargs(kwargs, tasks)
  return choice.spec.combiner(**kwargs)


def enhancer_gradient(method: Method, measure_cosine: bool) -> EnhancerGradient:
  """The enhancer gradient of ``method``'s joint phase; ``measure_cosine`` (config
  ``measure_baseline_cosine``) pulls g_e and g_t back apart, so the combiner makes the same update
  and logs their cosine.

  >>> from gradprom_jax.methods import lookup
  >>> enhancer_gradient(lookup("joint"), False), enhancer_gradient(lookup("joint"), True)
  ('summed', 'separate')
  """
  return "separate" if measure_cosine else method.enhancer_gradient
