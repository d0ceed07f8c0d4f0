"""What the train loop does between steps: a fixed list of periodic actions.

After each step the loop runs every action that is due, in the order :func:`loop_actions` lists
them:

1. ``train_log``: the step's train record, read one log step behind (see
   :class:`~gradprom_jax.training.metric_logging.OneLogStepBehind`), every ``log_every`` steps;
2. ``gate_probe``: do two halves of the batch agree on the gate's cosine? Every
   ``gate_probe_every`` steps (0: never) of a phase that trains the enhancer;
3. ``validation``: every ``eval_every`` steps; its metrics go to the checkpoint (the best);
4. ``checkpoint``: every ``checkpoint_every`` steps and after each validation, one write per step;
   the held train record is written first, so a run killed after the save resumes with every
   record up to it;
5. ``preemption_stop``: after every step; a stop request raises :class:`TrainingStopped`. Several
   hosts agree on it by a blocking collective only where the loop waited for the device anyway
   (a log or checkpoint step, the last step), see
   :meth:`~gradprom_jax.training.preemption.PreemptionGuard.should_stop_all_hosts`.

The last step always logs, validates and saves. Schedules count global steps, so a resumed run
keeps them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable, Protocol

from gradprom_jax.training.phases import Phase


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When an action is due: after every multiple of each of ``every`` (0: none) and, with
  ``at_last``, after the last step.

  >>> logs = Schedule(every=(4,), at_last=True)
  >>> [done for done in range(1, 11) if logs.is_due(done, is_last=done == 10)]
  [4, 8, 10]
  >>> Schedule(every=(0,)).is_due(4, is_last=True)
  False
  """
  every: tuple[int, ...] = ()
  at_last: bool = False

  def is_due(self, done: int, is_last: bool) -> bool:
    """Whether the action runs once ``done`` steps are done (``is_last``: the run's last step)."""
    return (self.at_last and is_last) or any(n > 0 and done % n == 0 for n in self.every)


@dataclasses.dataclass
class StepEnd:
  """A step just dispatched, as the actions after it see it.

  Attributes:
    done: the number of steps done (the global step counter after this step).
    is_last: whether this was the run's last step.
    phase: the phase this step trained in.
    state: the train state after the step (the loop's device layout).
    batch: the host batch the step trained on.
    metrics: the step's metrics (on the device).
    validation: the validation metrics, once the ``validation`` action has run at this step.
  """
  done: int
  is_last: bool
  phase: Phase
  state: Any = None
  batch: Any = None
  metrics: Any = None
  validation: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class PeriodicAction:
  """A named thing the loop does on a schedule, given the :class:`StepEnd`; ``applies`` may leave
  out some due steps (the gate probe: phases with a frozen enhancer)."""
  name: str
  schedule: Schedule
  run: Callable[[StepEnd], None]
  applies: Callable[[StepEnd], bool] = lambda end: True

  def is_due(self, end: StepEnd) -> bool:
    return self.schedule.is_due(end.done, end.is_last) and self.applies(end)


def run_due_actions(actions: Sequence[PeriodicAction], end: StepEnd) -> None:
  """Runs each action of ``actions`` that is due after ``end``, in order."""
  for action in actions:
    if action.is_due(end):
      action.run(end)


class TrainingStopped(Exception):
  """A stop was requested (SIGTERM/SIGINT on any host); raised by the ``preemption_stop`` action
  after ``done`` steps, for the loop to save and return."""

  def __init__(self, done: int):
    super().__init__(f"stopped after step {done}")
    self.done = done


@dataclasses.dataclass(frozen=True)
class Intervals:
  """Every how many steps the loop logs, validates, checkpoints and probes the gate (0: never)."""
  log_every: int
  eval_every: int
  checkpoint_every: int
  gate_probe_every: int = 0


class HeldRecord(Protocol):
  """The train record held one log step behind (:class:`~gradprom_jax.training.metric_logging.
  OneLogStepBehind`)."""

  def put(self, step: int, values: Any) -> None: ...

  def flush(self) -> None: ...


def loop_actions(intervals: Intervals, *, train_log: HeldRecord,
                 train_record: Callable[[StepEnd], Any],
                 probe_gate: Callable[[StepEnd], None],
                 validate: Callable[[StepEnd], dict[str, float]],
                 save_checkpoint: Callable[[StepEnd], None],
                 stop_requested: Callable[..., bool]) -> tuple[PeriodicAction, ...]:
  """The loop's actions, in the order they run after a step (see the module docstring).

  Args:
    intervals: the actions' intervals.
    train_log: holds each log step's record until the next one (or a flush) writes it.
    train_record: the record of the step at ``end`` to hold (device values, read when written).
    probe_gate: measures and logs the gate probe at ``end``.
    validate: evaluates on validation at ``end``, logs and returns the metrics.
    save_checkpoint: saves at ``end`` (forced at the last step; ``end.validation`` for the best).
    stop_requested: ``stop_requested(done, sync=...)``: whether any host asked to stop; ``sync``
      where the loop waited for the device anyway (see
      :meth:`~gradprom_jax.training.preemption.PreemptionGuard.should_stop_all_hosts`).

  >>> actions = loop_actions(Intervals(log_every=2, eval_every=3, checkpoint_every=3),
  ...     train_log=None, train_record=None, probe_gate=None, validate=None,
  ...     save_checkpoint=None, stop_requested=None)
  >>> [a.name for a in actions]
  ['train_log', 'gate_probe', 'validation', 'checkpoint', 'preemption_stop']
  """
  every = intervals

  def log(end: StepEnd) -> None:
    train_log.put(end.done, train_record(end))
    if end.is_last:
      train_log.flush()

  def validation(end: StepEnd) -> None:
    end.validation = validate(end)

  def checkpoint(end: StepEnd) -> None:
    # The held record first: a run killed after this save resumes from here and keeps only records
    # up to here. (Saving waits for this step anyway.)
    train_log.flush()
    save_checkpoint(end)

  # Where the loop waits for the device anyway: reading a log record, saving a checkpoint.
  waited = Schedule(every=(every.log_every, every.checkpoint_every), at_last=True)

  def preemption_stop(end: StepEnd) -> None:
    if stop_requested(end.done, sync=waited.is_due(end.done, end.is_last)):
      raise TrainingStopped(end.done)

  return (
      PeriodicAction("train_log", Schedule(every=(every.log_every,), at_last=True), log),
      PeriodicAction("gate_probe", Schedule(every=(every.gate_probe_every,)), probe_gate,
                     applies=lambda end: end.phase.enhancer_gradient != "none"),
      # Validation also at the last step, so that variants and λ can be chosen on the final model.
      PeriodicAction("validation", Schedule(every=(every.eval_every,), at_last=True), validation),
      # One write per step, periodic or best or both (a new best is saved off the interval too).
      PeriodicAction("checkpoint",
                     Schedule(every=(every.checkpoint_every, every.eval_every), at_last=True),
                     checkpoint),
      PeriodicAction("preemption_stop", Schedule(every=(1,)), preemption_stop),
  )
