"""Non-finite steps: NaNs injected into training batches are skipped, counted and logged; too many in
a row stop training with a clear error and leave the last good checkpoint intact."""
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from gradprom_jax import data as data_lib
from gradprom_jax.core.image_dtype import to_unit_float
from gradprom_jax.training import train


def _smoke_config(tmp_path, **overrides):
  config = default.get_config("smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  for key, value in overrides.items():
    config[key] = value
  return config


def _poison_batches(monkeypatch, bad_batches: set[int]) -> None:
  """Makes the train loader put NaN into the images of the given (0-based) batches of this process.

  The loader stays a grain dataset (`.map`), so the loop can still checkpoint its position.
  """
  real = data_lib.make_train_loader
  served = []

  def poison(batch):
    # uint8 images hold no NaN: every batch is served as float images in [0, 1] (which the train
    # step takes as they are, with one compiled program), the bad ones as NaN.
    batch = dict(batch, image=to_unit_float(batch["image"]))
    if len(served) in bad_batches:
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    served.append(len(served))
    return batch

  monkeypatch.setattr(data_lib, "make_train_loader", lambda *a, **k: real(*a, **k).map(poison))


def _saved_state(workdir, step):
  """The train state saved at `step`, as nested dicts of numpy arrays (no target needed)."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(workdir / "checkpoints" / str(step) / "state")


def _trees_equal(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(
      lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def test_nan_batches_are_skipped_counted_and_a_streak_stops_training(tmp_path, monkeypatch):
  # Steps (numbered from 1) 3, 5, 6, 7 get NaN images. Logging every 3 steps sees streaks 1 (step 3)
  # and 2 (step 6); the streak of 3 reached at step 7 has ended by the log at step 9, and must
  # still stop the run there (max_nonfinite_steps=3).
  _poison_batches(monkeypatch, {2, 4, 5, 6})
  config = _smoke_config(tmp_path, num_train_steps=9, max_nonfinite_steps=3, log_every=3,
                         checkpoint_every=1, keep_checkpoints=10, eval_every=100)
  workdir = tmp_path / "run"

  with pytest.raises(train.NonFiniteTrainingError, match=r"3 consecutive steps \(by step 9\)"):
    train.train_and_evaluate(config, str(workdir))

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  logged = {r["step"]: (r["nonfinite"], r["nonfinite_streak"]) for r in records if "nonfinite" in r}
  assert logged == {3: (1, 1), 6: (1, 2), 9: (0, 0)}
  assert not (workdir / train.RESULTS_FILENAME).exists()

  # Every step up to 8 was saved; step 9 raised before saving. The last one is finite and counts
  # all four skipped steps.
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
      *range(1, 9)]
  saved = {step: _saved_state(workdir, step) for step in range(2, 9)}
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved[8]["enhancer_params"]))
  assert [int(saved[step]["nonfinite_total"]) for step in range(2, 9)] == [0, 1, 1, 2, 3, 4, 4]
  # A skipped step changes neither parameters nor optimiser states; a good one does.
  learned = ("enhancer_params", "recognizer_params", "enhancer_opt_state", "recognizer_opt_state")
  for skipped, before in ((3, 2), (5, 4), (6, 4), (7, 4)):
    assert all(_trees_equal(saved[skipped][k], saved[before][k]) for k in learned), skipped
  for good, before in ((4, 3), (8, 7)):
    assert not _trees_equal(saved[good]["enhancer_params"], saved[before]["enhancer_params"]), good
