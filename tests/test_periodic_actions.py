"""The train loop's periodic actions: which run after which step, in which order, and what they hand
each other (no model is compiled: every action's work is a recording fake)."""
import pytest

from gradprom_jax.training.metric_logging import OneLogStepBehind
from gradprom_jax.training.periodic_actions import (Intervals, Schedule, StepEnd, TrainingStopped,
                                                    loop_actions, run_due_actions)
from gradprom_jax.training.phases import Phase

JOINT = Phase("gradprom", 0, 100, enhancer_gradient="separate", update_recognizer=True,
              recognizer_input="enhanced")
FROZEN_ENHANCER = Phase("recognizer", 0, 100, enhancer_gradient="none", update_recognizer=True,
                        recognizer_input="enhanced")


class Recorder:
  """Fakes of every action's work, writing what happens in order to ``events``."""

  def __init__(self, stop_after: int | None = None):
    self.events, self.syncs, self.stop_after = [], {}, stop_after
    self.train_log = OneLogStepBehind(lambda step, record: self.events.append(("record", step)))

  def actions(self, intervals: Intervals):
    return loop_actions(
        intervals, train_log=self.train_log, train_record=lambda end: end.done,
        probe_gate=lambda end: self.events.append(("probe", end.done)),
        validate=self.validate, save_checkpoint=self.save, stop_requested=self.stop_requested)

  def validate(self, end):
    self.events.append(("validate", end.done))
    return {"dice": end.done / 10}

  def save(self, end):
    self.events.append(("save", end.done, end.is_last, end.validation))

  def stop_requested(self, done, *, sync):
    self.syncs[done] = sync
    return done == self.stop_after


def run(recorder: Recorder, intervals: Intervals, start: int, total: int,
        phase: Phase = JOINT) -> list[tuple]:
  """The loop's schedule from ``start`` to ``total`` steps, with no step computed."""
  actions = recorder.actions(intervals)
  for step in range(start, total):
    run_due_actions(actions, StepEnd(step + 1, step + 1 == total, phase))
  return recorder.events


def due_names(intervals: Intervals, done: int, is_last: bool, phase: Phase = JOINT) -> list[str]:
  return [a.name for a in Recorder().actions(intervals) if a.is_due(StepEnd(done, is_last, phase))]


SMOKE = Intervals(log_every=2, eval_every=3, checkpoint_every=3)


def test_which_actions_are_due_after_each_step_in_the_fixed_order():
  due = {done: due_names(SMOKE, done, is_last=done == 7) for done in range(1, 8)}
  assert due == {
      1: ["preemption_stop"],
      2: ["train_log", "preemption_stop"],
      3: ["validation", "checkpoint", "preemption_stop"],
      4: ["train_log", "preemption_stop"],
      5: ["preemption_stop"],
      6: ["train_log", "validation", "checkpoint", "preemption_stop"],
      7: ["train_log", "validation", "checkpoint", "preemption_stop"],   # the last step: all
  }


def test_the_last_step_logs_validates_and_saves_even_off_every_interval():
  sparse = Intervals(log_every=100, eval_every=100, checkpoint_every=100, gate_probe_every=100)
  assert due_names(sparse, 5, is_last=True) == ["train_log", "validation", "checkpoint",
                                               "preemption_stop"]
  assert due_names(sparse, 5, is_last=False) == ["preemption_stop"]


def test_a_validation_off_the_checkpoint_interval_still_saves_and_hands_over_its_metrics():
  events = run(Recorder(), Intervals(log_every=10, eval_every=2, checkpoint_every=5), 0, 5)
  assert [e for e in events if e[0] == "save"] == [
      ("save", 2, False, {"dice": 0.2}), ("save", 4, False, {"dice": 0.4}),
      ("save", 5, True, {"dice": 0.5})]


def test_a_checkpoint_off_validation_gets_no_metrics_and_one_save_per_step():
  events = run(Recorder(), Intervals(log_every=10, eval_every=6, checkpoint_every=3), 0, 6)
  saves = [e for e in events if e[0] == "save"]
  assert saves == [("save", 3, False, None), ("save", 6, True, {"dice": 0.6})]


def test_the_held_record_is_written_before_each_save_and_at_the_end():
  events = run(Recorder(), Intervals(log_every=2, eval_every=100, checkpoint_every=3), 0, 7)
  assert events == [
      ("record", 2), ("save", 3, False, None),   # step 2's record, held until the save at 3
      ("record", 4),                              # written when step 6 is put
      ("record", 6), ("save", 6, False, None),
      ("record", 7), ("validate", 7), ("save", 7, True, {"dice": 0.7})]   # the last, at once


def test_a_resumed_start_keeps_the_global_schedule_and_holds_nothing_from_before():
  events = run(Recorder(), SMOKE, start=3, total=7)
  assert events == [
      ("record", 4), ("validate", 6), ("record", 6), ("save", 6, False, {"dice": 0.6}),
      ("record", 7), ("validate", 7), ("save", 7, True, {"dice": 0.7})]


def test_the_gate_probe_runs_on_its_interval_only_where_the_enhancer_trains():
  intervals = Intervals(log_every=100, eval_every=100, checkpoint_every=100, gate_probe_every=2)
  events = run(Recorder(), intervals, 0, 5)
  assert [e for e in events if e[0] == "probe"] == [("probe", 2), ("probe", 4)]  # not at last
  frozen = run(Recorder(), intervals, 0, 5, phase=FROZEN_ENHANCER)
  assert [e for e in frozen if e[0] == "probe"] == []
  assert "gate_probe" not in due_names(Intervals(2, 2, 2, gate_probe_every=0), 4, is_last=True)


def test_hosts_agree_on_a_stop_only_where_the_loop_waited_for_the_device():
  recorder = Recorder()
  run(recorder, Intervals(log_every=2, eval_every=3, checkpoint_every=5), 0, 7)
  # log steps (2, 4, 6), the checkpoint interval (5), the last step (7); not validation alone (3)
  assert recorder.syncs == {1: False, 2: True, 3: False, 4: True, 5: True, 6: True, 7: True}


def test_a_stop_request_ends_the_step_after_its_checkpoint():
  recorder = Recorder(stop_after=3)
  with pytest.raises(TrainingStopped) as stopped:
    run(recorder, SMOKE, 0, 7)
  assert stopped.value.done == 3
  assert recorder.events[-1] == ("save", 3, False, {"dice": 0.3})   # the stop check runs last
  assert max(recorder.syncs) == 3   # no step after the stop


@pytest.mark.parametrize("every, at_last, due", [
    ((3,), False, [3, 6]), ((3,), True, [3, 6, 7]), ((0,), True, [7]), ((0,), False, []),
    ((2, 3), False, [2, 3, 4, 6]), ((), True, [7])])
def test_schedule(every, at_last, due):
  schedule = Schedule(every=every, at_last=at_last)
  assert [done for done in range(1, 8) if schedule.is_due(done, is_last=done == 7)] == due
