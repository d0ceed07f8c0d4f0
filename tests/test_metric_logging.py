"""Tests for gradprom_jax.training.metric_logging: jsonl records, TensorBoard events, resume, disabled hosts."""

import collections
import json
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from gradprom_jax.training.metric_logging import METRICS_FILENAME, MetricLogger, read_metrics


def read_scalars(logdir):
  """Tag -> [(step, value)] from TFRecord-framed event files (TensorBoard itself is not installed)."""
  scalars = collections.defaultdict(list)
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4  # Length, its CRC, the payload, the payload's CRC.
      for value in event.summary.value:
        scalars[value.tag].append((event.step, value.simple_value))
  return scalars


def test_jsonl_one_parseable_object_per_call(tmp_path):
  with MetricLogger(tmp_path, total_steps=100, show_progress=False) as logger:
    logger.log_train(10, {"loss": jnp.float32(0.5), "gate_open": np.float64(0.25)})
    logger.log_train(20, {"loss": jnp.array([0.25])})
    logger.log_eval(20, {"psnr": 31.5}, prefix="test")
    logger.log_train(30, {"loss": float("nan")})
  lines = (tmp_path / METRICS_FILENAME).read_text().splitlines()
  records = [json.loads(line) for line in lines]
  assert [(r["step"], r["kind"]) for r in records] == [(10, "train"), (20, "train"), (20, "test"),
                                                      (30, "train")]
  assert records[0]["loss"] == 0.5 and records[0]["gate_open"] == 0.25
  assert records[2]["psnr"] == 31.5
  assert np.isnan(records[3]["loss"])
  assert all(isinstance(r["time"], float) for r in records)


def test_tensorboard_scalars_written(tmp_path):
  with MetricLogger(tmp_path, total_steps=10, show_progress=False) as logger:
    logger.log_train(1, {"loss": 2.0})
    logger.log_eval(5, {"dice": 0.75})
  scalars = read_scalars(tmp_path / "tensorboard")
  assert scalars["train/loss"] == [(1, 2.0)]
  assert scalars["val/dice"] == [(5, 0.75)]


def test_resume_drops_records_after_the_checkpoint(tmp_path):
  with MetricLogger(tmp_path, total_steps=100, show_progress=False) as logger:
    for step in (10, 20, 30):
      logger.log_train(step, {"loss": float(step)})
  with open(tmp_path / METRICS_FILENAME, "a") as f:
    f.write('{"step": 40, "kind": "tr')  # Cut short by a kill.
  # The checkpoint was at step 20: steps 30 and 40 will be recomputed.
  with MetricLogger(tmp_path, total_steps=100, start_step=20, show_progress=False) as logger:
    logger.log_train(30, {"loss": -1.0})
  assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / METRICS_FILENAME)] == [
      (10, 10.0), (20, 20.0), (30, -1.0)]


def test_progress_bar_shows_position_and_losses(tmp_path, capsys):
  with MetricLogger(tmp_path, total_steps=50, start_step=10) as logger:
    logger.log_train(25, {"loss_ip": 0.125, "accuracy": 0.9})
    logger._bar.refresh()
    assert logger._bar.n == 25
  err = capsys.readouterr().err
  assert "25/50" in err and "loss_ip=0.125" in err and "accuracy" not in err


def test_disabled_logger_writes_nothing(tmp_path):
  with MetricLogger(tmp_path / "run", total_steps=10, enabled=False) as logger:
    logger.log_train(1, {"loss": 1.0})
    logger.log_eval(1, {"loss": 1.0})
  assert not (tmp_path / "run").exists()


def test_non_scalar_and_reserved_names_rejected(tmp_path):
  with MetricLogger(tmp_path, total_steps=10, show_progress=False) as logger:
    with pytest.raises(ValueError, match="'loss' must be a scalar"):
      logger.log_train(1, {"loss": np.ones(3)})
    with pytest.raises(ValueError, match="'step' is reserved"):
      logger.log_train(1, {"step": 1})


def test_replace_kinds_drops_earlier_records_of_that_kind_at_any_step(tmp_path):
  with MetricLogger(tmp_path, total_steps=10, show_progress=False) as logger:
    logger.log_train(10, {"loss": 1.0})
    logger.log_eval(10, {"psnr": 20.0}, prefix="test")
  # A re-evaluation of the finished run starts at the last step and writes the test record afresh.
  with MetricLogger(tmp_path, total_steps=10, start_step=10, show_progress=False,
                    replace_kinds=("test",)) as logger:
    logger.log_eval(10, {"psnr": 21.0}, prefix="test")
  assert [(r["kind"], r.get("psnr")) for r in read_metrics(tmp_path / METRICS_FILENAME)] == [
      ("train", None), ("test", 21.0)]


def test_bar_advances_per_dispatched_step_and_lines_print_above_it(tmp_path, capsys):
  with MetricLogger(tmp_path, total_steps=50) as logger:
    logger.advance(3)
    assert logger._bar.n == 3
    logger.write("compiling the train step...")
    logger.advance(2)   # never backwards
    assert logger._bar.n == 3
  assert "compiling the train step..." in capsys.readouterr().out
  assert not (tmp_path / METRICS_FILENAME).read_text()   # advancing records nothing
