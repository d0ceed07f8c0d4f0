"""The train loop reads a log step's metrics one log step later, never the step it just dispatched,
and still writes every log step's record, with its own step's values, to metrics.jsonl."""
import json

import numpy as np
import pytest

from benchmarks.train_loop_hooks import intercept_step_calls
from configs import default
from gradprom_jax.training import parallel as parallel_lib, train


@pytest.mark.parametrize("mode", [pytest.param("mesh", marks=pytest.mark.slow), "pmap"])
def test_log_steps_read_the_previous_log_step_and_record_every_one(tmp_path, monkeypatch, mode):
  config = default.get_config("smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.parallel = mode
  config.num_train_steps, config.log_every = 7, 2
  config.eval_every = config.checkpoint_every = 100   # only the last step evaluates and saves
  dispatched, step_of, reads = [0], {}, []

  def hook(compiled, state, batch, index):
    state, metrics = compiled(state, batch)
    dispatched[0] = index + 1
    step_of[id(metrics)] = (index + 1, metrics)
    return state, metrics

  real_read = parallel_lib.DataParallel.metrics_to_host

  def spy(self, metrics):
    host = real_read(self, metrics)
    step, _ = step_of[id(metrics)]
    reads.append((dispatched[0], step, host))
    return host

  monkeypatch.setattr(parallel_lib.DataParallel, "metrics_to_host", spy)
  with intercept_step_calls(hook):
    train.train_and_evaluate(config, str(tmp_path / "run"))

  # (steps dispatched when read, step read): each log step is read when the next one is dispatched;
  # the last two at the end.
  assert [(d, s) for d, s, _ in reads] == [(4, 2), (6, 4), (7, 6), (7, 7)]
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if r["kind"] == "train"]
  assert [r["step"] for r in train_records] == [2, 4, 6, 7]
  for record, (_, step, host) in zip(train_records, reads):
    assert record["step"] == step
    for name, value in host.items():
      np.testing.assert_equal(record[name], value, err_msg=f"{name} at step {step}")
    assert record["steps_per_second"] > 0
  # The losses change from step to step, so a record holding another step's values would show.
  assert len({r["enhancement_loss"] for r in train_records}) == len(train_records)
