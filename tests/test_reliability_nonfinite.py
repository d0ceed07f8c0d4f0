"""Non-finite steps: NaNs injected into training batches are skipped, counted and logged; too many in
a row stop training with a clear error and leave the last good checkpoint intact."""
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from gradprom_jax import data as data_lib
from gradprom_jax import train


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
  # Batch 1 is bad alone (skipped, training goes on); batches 3, 4 are bad in a row: with
  # max_nonfinite_steps=2, training stops after step 5 (steps are numbered from 1).
  _poison_batches(monkeypatch, {1, 3, 4, 5})
  config = _smoke_config(tmp_path, max_nonfinite_steps=2, log_every=1, checkpoint_every=1,
                         keep_checkpoints=10, eval_every=100)
  workdir = tmp_path / "run"

  with pytest.raises(train.NonFiniteTrainingError, match=r"2 consecutive steps up to step 5"):
    train.train_and_evaluate(config, str(workdir))

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_records = {r["step"]: r for r in records if "nonfinite" in r}
  assert {s: train_records[s]["nonfinite"] for s in range(1, 6)} == {1: 0, 2: 1, 3: 0, 4: 1, 5: 1}
  assert {s: train_records[s]["nonfinite_streak"] for s in range(1, 6)} == {
      1: 0, 2: 1, 3: 0, 4: 1, 5: 2}
  assert not (workdir / train.RESULTS_FILENAME).exists()

  saved = {step: _saved_state(workdir, step) for step in (1, 2, 3, 4)}
  # The last checkpoint written (step 4; step 5 raised before saving) is finite and restorable.
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [
      1, 2, 3, 4]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved[4]["enhancer_params"]))
  assert int(saved[4]["nonfinite_total"]) == 2
  # A skipped step changes neither parameters nor optimiser states; a good one does.
  learned = ("enhancer_params", "recognizer_params", "enhancer_opt_state", "recognizer_opt_state")
  for skipped, before in ((2, 1), (4, 3)):
    assert all(_trees_equal(saved[skipped][k], saved[before][k]) for k in learned), skipped
  assert not _trees_equal(saved[3]["enhancer_params"], saved[2]["enhancer_params"])
