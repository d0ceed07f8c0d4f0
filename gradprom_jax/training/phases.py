"""The phases of a run: which model is updated, from what, during which steps.

Every method is a sequence of phases over the global step counter, from 0 to `run_length`
(``num_train_steps``, except for ``two_stage``):

* optional recogniser pre-training on high-quality images (``recognizer.pretrain_steps``);
* a combination method (``gradprom``, ``joint``, ...: a :class:`~gradprom_jax.methods.Method`): one
  joint phase in which the enhancer is updated as the method's ``enhancer_gradient`` says and the
  recogniser by its own loss;
* the schedules (:mod:`gradprom_jax.methods.schedules`): ``two_stage``: the enhancer alone, then the recogniser alone on the frozen enhancer's outputs,
  step-matched: each stage as many updates as a joint method gives that model (so the run is
  longer); with ``recognizer.frozen`` the second stage is skipped;
* ``recognizer_only``: the recogniser alone on high-quality images, the enhancer never updated (a
  pre-trained recogniser for other runs' ``recognizer.init_from`` or ``judge.workdir``).

Each phase is compiled once into its own train step (the phase is a static argument).
"""
from __future__ import annotations

import dataclasses

from gradprom_jax.methods import Method, Schedule, enhancer_gradient
from gradprom_jax.methods.schedules import RECOGNIZER_ONLY, TWO_STAGE


@dataclasses.dataclass(frozen=True)
class Phase:
  """A contiguous range of steps trained the same way.

  Attributes:
    name: shown in logs and metrics.
    start, end: the phase covers global steps ``start <= step < end``.
    enhancer_gradient: how the enhancer is updated: ``"none"`` (frozen), ``"enhancement"`` (g_e
      only), ``"summed"`` (one pull-back of the summed cotangent: exactly g_e + λ g_t, the cheap way
      to train jointly), or ``"separate"`` (g_e and g_t pulled back apart and combined by the
      combiner, e.g. GradProm).
    update_recognizer: whether the recogniser is updated in this phase.
    recognizer_input: what the recogniser is trained on: "enhanced", "high_quality" or "both".
  """
  name: str
  start: int
  end: int
  enhancer_gradient: str
  update_recognizer: bool
  recognizer_input: str

  @property
  def needs_enhancer(self) -> bool:
    return self.enhancer_gradient != "none" or self.recognizer_input != "high_quality"


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
  """What a run's phases are made from, read from the config
  (:func:`gradprom_jax.training.training_spec.parse_phase_spec`).

  Attributes:
    method: the method (``config.method``): a combination method trains in one joint phase, a
      schedule has a layout of its own.
    num_train_steps: ``num_train_steps``.
    pretrain_steps: ``recognizer.pretrain_steps``, recogniser pre-training on high-quality images.
    recognizer_frozen: ``recognizer.frozen``: the recogniser is never updated after pre-training.
    recognizer_train_on: ``recognizer.train_on``: "enhanced", "high_quality" or "both".
    measure_baseline_cosine: ``measure_baseline_cosine``: g_e and g_t pulled back apart to log
      their cosine, for a method that would sum them.
  """
  method: Method | Schedule
  num_train_steps: int
  pretrain_steps: int = 0
  recognizer_frozen: bool = False
  recognizer_train_on: str = "enhanced"
  measure_baseline_cosine: bool = False


def make_phases(spec: PhaseSpec) -> tuple[Phase, ...]:
  """The phases ``spec`` trains through, in order, covering ``[0, run_length(phases))``.

  >>> from gradprom_jax.methods import lookup
  >>> spec = PhaseSpec(lookup("gradprom"), num_train_steps=100, pretrain_steps=10)
  >>> [(p.name, p.start, p.end, p.enhancer_gradient) for p in make_phases(spec)]
  [('recognizer_pretrain', 0, 10, 'none'), ('gradprom', 10, 100, 'separate')]
  >>> spec = dataclasses.replace(spec, method=lookup("two_stage"))
  >>> [(p.name, p.start, p.end) for p in make_phases(spec)]
  [('recognizer_pretrain', 0, 10), ('enhancer', 10, 100), ('recognizer', 100, 190)]
  >>> frozen = dataclasses.replace(spec, recognizer_frozen=True)   # nothing left to train after
  >>> [(p.name, p.start, p.end) for p in make_phases(frozen)]
  [('recognizer_pretrain', 0, 10), ('enhancer', 10, 100)]
  >>> spec = dataclasses.replace(spec, method=lookup("recognizer_only"), pretrain_steps=0)
  >>> [(p.name, p.start, p.end, p.enhancer_gradient, p.recognizer_input) for p in make_phases(spec)]
  [('recognizer_only', 0, 100, 'none', 'high_quality')]
  """
  total, pretrain, method = spec.num_train_steps, spec.pretrain_steps, spec.method
  if method == RECOGNIZER_ONLY:
    return (Phase("recognizer_only", 0, total, enhancer_gradient="none", update_recognizer=True,
                  recognizer_input="high_quality"),)
  phases = []
  if pretrain > 0:
    phases.append(Phase("recognizer_pretrain", 0, pretrain, enhancer_gradient="none",
                        update_recognizer=True, recognizer_input="high_quality"))
  if method == TWO_STAGE:
    # Step-matched: the enhancer gets the updates a joint method gives it, then the recogniser as
    # many.
    stage = total - pretrain
    end = pretrain + 2 * stage
    phases.append(Phase("enhancer", pretrain, pretrain + stage, enhancer_gradient="enhancement",
                        update_recognizer=False, recognizer_input="enhanced"))
    if not spec.recognizer_frozen:
      phases.append(Phase("recognizer", pretrain + stage, end, enhancer_gradient="none",
                          update_recognizer=True, recognizer_input="enhanced"))
  else:
    # measure_baseline_cosine: the same update, g_e and g_t pulled back apart to log their cosine.
    gradient = enhancer_gradient(method, spec.measure_baseline_cosine)
    phases.append(Phase(method.name, pretrain, total, enhancer_gradient=gradient,
                        update_recognizer=not spec.recognizer_frozen,
                        recognizer_input=spec.recognizer_train_on))
  return tuple(p for p in phases if p.end > p.start)


def run_length(phases: tuple[Phase, ...]) -> int:
  """The number of train steps the phases cover (the end of the last one)."""
  return phases[-1].end


def phase_at(phases: tuple[Phase, ...], step: int) -> Phase:
  """The phase that contains ``step``."""
  for phase in phases:
    if phase.start <= step < phase.end:
      return phase
  raise ValueError(f"step {step} is outside every phase {[(p.start, p.end) for p in phases]}")
