"""Methods with a phase layout of their own instead of a combiner: each trains one model at a time.

Their phases are laid out by :func:`gradprom_jax.training.phases.make_phases`; they have no config
group (``recognizer.*`` holds what they read).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A method that is a phase layout, the value ``name`` of ``config.method``.

  Attributes:
    name: the value of ``config.method``.
    doc: one line on what it trains (``--help`` shows it).
  """
  name: str
  doc: str


TWO_STAGE = Schedule(
    "two_stage", "the enhancer alone, then the recogniser on its frozen outputs (step-matched: "
    "each as many updates as a joint method gives it; the second stage skipped when "
    "recognizer.frozen)")
RECOGNIZER_ONLY = Schedule(
    "recognizer_only", "the recogniser alone on high-quality images, the enhancer at its init (the "
    "pre-trained recogniser that recognizer.init_from and judge.workdir restore)")
SCHEDULES: tuple[Schedule, ...] = (TWO_STAGE, RECOGNIZER_ONLY)
