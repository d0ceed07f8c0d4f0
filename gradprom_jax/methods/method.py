"""A combination method: how the enhancer's update is made from g_e and g_t, with its own options.

A method is one :class:`Method`, defined as ``METHOD`` in its own module of this package (found by
:mod:`gradprom_jax.methods.registry`). It owns its name and one-line doc, its combiner (a pure optax
transformation from :mod:`gradprom_jax.core.combiners`), how the enhancer's gradient is pulled back
for it, its config group ``config.<name>`` (defaults, with the comments ``--help`` shows), and the
checks of that group. Each key of the group feeds the combiner's argument of the same name.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import ml_collections
import optax

EnhancerGradient = Literal["separate", "summed", "enhancement"]


class OptionError(ValueError):
  """A method's option that cannot run; the message names the key (a ConfigError in validation)."""


def check_choice(key: str, value: Any, valid: Sequence[Any]) -> None:
  """Raises :class:`OptionError` unless ``value`` is one of ``valid``.

  >>> check_choice("gradprom.mode", "hard", ("hard", "soft"))
  >>> check_choice("gradprom.mode", "harsh", ("hard", "soft"))
  Traceback (most recent call last):
  ...
  gradprom_jax.methods.method.OptionError: gradprom.mode='harsh' is not one of hard, soft.
  """
  if value not in valid:
    raise OptionError(f"{key}={value!r} is not one of {', '.join(map(str, valid))}.")


def check_fraction(key: str, value: Any, *, closed: bool = True, note: str = "") -> None:
  """Raises :class:`OptionError` unless ``value`` is in [0, 1] (``closed=False``: [0, 1)); ``note``
  ends the message.

  >>> check_fraction("random_gate.open_rate", 1.2)
  Traceback (most recent call last):
  ...
  gradprom_jax.methods.method.OptionError: random_gate.open_rate=1.2 must be in [0, 1].
  """
  if not (0 <= value <= 1 if closed else 0 <= value < 1):
    raise OptionError(f"{key}={value} must be in [0, {'1]' if closed else '1)'}{note}.")


@dataclasses.dataclass(frozen=True)
class Method:
  """One combination method, the value ``name`` of ``config.method``.

  >>> from gradprom_jax.core.combiners.baselines import pcgrad
  >>> method = Method("pcgrad", "g_e + λ g_t, a conflicting g_t projected off g_e", pcgrad)
  >>> method.combiner_args
  {'task_weight': 'task_weight'}

  Attributes:
    name: the value of ``config.method``, and the name of the method's config group.
    doc: one line on what the method does (``--help`` shows it).
    combiner: the factory of its combiner (an optax transformation of g_e with the extra argument
      ``task_grads``), called with the keyword arguments of :attr:`combiner_args`.
    enhancer_gradient: how the enhancer's gradient is pulled back in the joint phase
      (:class:`gradprom_jax.training.phases.Phase`): ``"separate"`` (g_e and g_t apart, combined by
      the combiner), ``"summed"`` (one pull-back of L_enh + λ L_task) or ``"enhancement"`` (g_e
      alone); with the latter two the combiner only logs the cosine under
      ``measure_baseline_cosine``.
    options: builds the config group ``config.<name>``: the method's own options with their
      defaults, a comment above each (``--help`` reads them from the source; the variable must be
      called ``config``). None: no options of its own. A stored run's config that lacks a key counts
      as holding its default, so a new option's default must reproduce the method without it.
    shared_options: top-level config keys passed to the combiner's argument of the same name.
    check: raises :class:`OptionError` for a group (``config.<name>``) that cannot run.
  """
  name: str
  doc: str
  combiner: Callable[..., optax.GradientTransformationExtraArgs]
  enhancer_gradient: EnhancerGradient = "separate"
  options: Callable[[], ml_collections.ConfigDict] | None = None
  shared_options: tuple[str, ...] = ("task_weight",)
  check: Callable[[ml_collections.ConfigDict], None] | None = None

  def __post_init__(self):
    if self.enhancer_gradient not in ("separate", "summed", "enhancement"):
      raise ValueError(f"{self.name}: enhancer_gradient={self.enhancer_gradient!r} is not one of "
                       "separate, summed, enhancement.")

  def default_options(self) -> ml_collections.ConfigDict:
    """A fresh copy of the method's config group (empty without options)."""
    return ml_collections.ConfigDict() if self.options is None else self.options()

  @property
  def combiner_args(self) -> dict[str, str]:
    """Combiner argument → the dotted config key it is read from."""
    return {**{key: key for key in self.shared_options},
            **{key: f"{self.name}.{key}" for key in self.default_options()}}

  def check_options(self, options: Mapping[str, Any]) -> None:
    """Raises :class:`OptionError` if ``options`` (``config.<name>``) cannot run."""
    if self.check is not None:
      self.check(options)
