"""Every training method, declared once: how it trains the enhancer, and its combiner built from config.

A method is one :class:`MethodSpec` in :data:`METHOD_SPECS`. Everything else is derived from that
table, so adding a combiner-based method is one entry (its factory, its gradient kind, and which config
keys become which factory arguments):

* ``config.METHODS``, the valid values of ``config.method``: the table's names, in order;
* ``combiners.COMBINERS`` (``get_combiner``): the entries that have a combiner;
* ``optimizers.make_enhancer_tx``: :func:`build_combiner` calls the factory with the keyword
  arguments of the run's :class:`MethodChoice`, read from the config through ``combiner_args`` (by
  ``gradprom_jax.configuration.run_spec.parse_method``, the one place that reads them);
* ``phases.make_phases``: ``enhancer_gradient`` (``"separate"``: the combiner combines g_e and g_t;
  ``"summed"``/``"enhancement"``: one cheap pull-back, the combiner used only to log the cosine under
  ``measure_baseline_cosine``) and ``schedule`` (``"joint"``; ``"two_stage"`` and ``"recognizer_only"``
  are the two methods with a phase layout of their own).

A method's own options live in one config group (``config.gradprom``, ``config.random_gate``), named by
``config_group``, whose defaults and comments stay in :func:`gradprom_jax.configuration.config.base_config` (where
``config_help`` reads them). Every key of that group must feed the factory argument of its own name
through ``combiner_args``: ``tests/test_methods.py`` changes each one and checks that the built
combiner's arguments and behaviour change with it.
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Literal, Mapping

import optax

# The factories are imported from their modules (not from the package), because the package's
# registry itself is derived from this table.
from gradprom_jax.core.combiners.baselines import enhance_only, joint, pcgrad, random_gate
from gradprom_jax.core.combiners.gradprom import gradprom
from gradprom_jax.core.task_config import GATE_OPTIONS, TaskConfig

EnhancerGradient = Literal["separate", "summed", "enhancement"]
Schedule = Literal["joint", "two_stage", "recognizer_only"]


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One training method.

  Attributes:
    name: the value of ``config.method``.
    doc: one line on what the method does.
    schedule: the phase layout: ``"joint"`` (one phase, both models trained together), or a method
      with its own (``"two_stage"``, ``"recognizer_only"``; see :mod:`gradprom_jax.training.phases`).
    enhancer_gradient: for a joint schedule, how the enhancer's gradient is made (see
      :class:`gradprom_jax.training.phases.Phase`); None for the other schedules.
    combiner: the factory of the method's combiner (an optax transformation of g_e with the extra
      argument ``task_grads``), or None for a method without one.
    config_group: the config group that holds the method's own options, or None.
    combiner_args: factory keyword → dotted config key (``{"threshold": "gradprom.threshold"}``).
  """
  name: str
  doc: str
  schedule: Schedule = "joint"
  enhancer_gradient: EnhancerGradient | None = None
  combiner: Callable[..., optax.GradientTransformationExtraArgs] | None = None
  config_group: str | None = None
  combiner_args: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if (self.schedule == "joint") != (self.enhancer_gradient is not None):
      raise ValueError(f"{self.name}: a joint schedule, and only it, needs an enhancer_gradient.")
    if self.enhancer_gradient == "separate" and self.combiner is None:
      raise ValueError(f"{self.name}: a 'separate' enhancer gradient needs a combiner.")
    if self.combiner_args and self.combiner is None:
      raise ValueError(f"{self.name}: combiner_args without a combiner.")
    # A read-only copy: the table is the one declaration, not to be edited through a spec.
    object.__setattr__(self, "combiner_args", types.MappingProxyType(dict(self.combiner_args)))


_TASK_WEIGHT = {"task_weight": "task_weight"}

METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec(
        "gradprom", "g_e + λ g_t where cos(g_e, g_t) > τ, else g_e (the paper's method)",
        enhancer_gradient="separate", combiner=gradprom, config_group="gradprom",
        combiner_args={**_TASK_WEIGHT, "threshold": "gradprom.threshold",
                       "granularity": "gradprom.granularity", "mode": "gradprom.mode",
                       "task_scale": "gradprom.task_scale", "cosine_ema": "gradprom.cosine_ema",
                       "gradient_ema": "gradprom.gradient_ema"}),
    MethodSpec("joint", "always g_e + λ g_t: the gradient of L_enh + λ L_task",
               enhancer_gradient="summed", combiner=joint, combiner_args=_TASK_WEIGHT),
    MethodSpec("pcgrad", "g_e + λ g_t with a conflicting g_t projected off g_e (Yu et al. 2020)",
               enhancer_gradient="separate", combiner=pcgrad, combiner_args=_TASK_WEIGHT),
    MethodSpec("enhance_only", "g_e alone: the recogniser never influences the enhancer",
               enhancer_gradient="enhancement", combiner=enhance_only),
    MethodSpec("two_stage", "the enhancer alone, then the recogniser on its frozen outputs",
               schedule="two_stage"),
    MethodSpec(
        "random_gate", "g_e + λ g_t on a random open_rate fraction of steps (a control for the gate)",
        enhancer_gradient="separate", combiner=random_gate, config_group="random_gate",
        combiner_args={**_TASK_WEIGHT, "open_rate": "random_gate.open_rate", "seed": "seed"}),
    MethodSpec("recognizer_only", "the recogniser alone on high-quality images (a judge or init)",
               schedule="recognizer_only"),
)

METHODS: tuple[str, ...] = tuple(spec.name for spec in METHOD_SPECS)
COMBINER_FACTORIES: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    spec.name: spec.combiner for spec in METHOD_SPECS if spec.combiner is not None}


def method_spec(name: str) -> MethodSpec:
  """The :class:`MethodSpec` of method ``name``.

  >>> method_spec("pcgrad").enhancer_gradient
  'separate'
  >>> method_spec("gradnorm")
  Traceback (most recent call last):
  ...
  ValueError: Unknown method 'gradnorm'; expected one of gradprom, joint, pcgrad, enhance_only, two_stage, random_gate, recognizer_only.
  """
  for spec in METHOD_SPECS:
    if spec.name == name:
      return spec
  raise ValueError(f"Unknown method {name!r}; expected one of {', '.join(METHODS)}.")


@dataclasses.dataclass(frozen=True)
class MethodChoice:
  """The run's method, read from the config once: its :class:`MethodSpec` and the keyword
  arguments its combiner factory is called with (single-task form; one value per argument).

  >>> choice = MethodChoice(method_spec("gradprom"), {"task_weight": 0.5, "threshold": 0.1})
  >>> choice.name, choice.combiner_kwargs["threshold"]
  ('gradprom', 0.1)
  """
  spec: MethodSpec
  combiner_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    unknown = set(self.combiner_kwargs) - set(self.spec.combiner_args)
    if unknown:
      raise ValueError(f"{self.spec.name}: combiner arguments {sorted(unknown)} are not among "
                       f"its combiner_args {sorted(self.spec.combiner_args)}.")
    object.__setattr__(self, "combiner_kwargs", types.MappingProxyType(dict(self.combiner_kwargs)))

  @property
  def name(self) -> str:
    return self.spec.name


def multitask_combiner_kwargs(kwargs: Mapping[str, Any], tasks: TaskConfig) -> dict[str, Any]:
  """``kwargs`` of a combiner built for ``tasks``' several tasks: ``tasks=`` their names, and each
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


def build_combiner(method: MethodChoice,
                   tasks: TaskConfig | None = None) -> optax.GradientTransformationExtraArgs:
  """``method``'s combiner, called with its resolved keyword arguments.

  With ``tasks`` (the config's parsed tasks) in the multi-task form, the combiner is built for
  their names (``task_grads`` a dict by task name) with per-task options from ``tasks``.

  >>> tx = build_combiner(MethodChoice(method_spec("pcgrad"), {"task_weight": 0.5}))
  >>> isinstance(tx, optax.GradientTransformationExtraArgs)
  True
  >>> build_combiner(MethodChoice(method_spec("two_stage")))
  Traceback (most recent call last):
  ...
  ValueError: Method 'two_stage' has no combiner; these do: gradprom, joint, pcgrad, enhance_only, random_gate.
  """
  spec = method.spec
  if spec.combiner is None:
    raise ValueError(f"Method {spec.name!r} has no combiner; these do: "
                     f"{', '.join(COMBINER_FACTORIES)}.")
  kwargs = dict(method.combiner_kwargs)
  if tasks is not None and tasks.multi_task:
    kwargs = multitask_combiner_kwargs(kwargs, tasks)
  return spec.combiner(**kwargs)


def enhancer_gradient(spec: MethodSpec, measure_cosine: bool) -> EnhancerGradient:
  """The enhancer gradient of ``spec``'s joint phase; ``measure_cosine`` (config
  ``measure_baseline_cosine``) pulls g_e and g_t back apart for a method that has a combiner, so
  the combiner makes the same update and logs their cosine.

  >>> enhancer_gradient(method_spec("joint"), False), enhancer_gradient(method_spec("joint"), True)
  ('summed', 'separate')
  """
  if spec.enhancer_gradient is None:
    raise ValueError(f"Method {spec.name!r} has a {spec.schedule} schedule, no joint phase.")
  if measure_cosine and spec.combiner is not None:
    return "separate"
  return spec.enhancer_gradient
