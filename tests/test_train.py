"""The training loop (`gradprom_jax.training.train`): through `experiments/main.py`, both parallel
modes end to end, a finished run left alone on a rerun, a readable console and the persistent
compilation cache; in process, non-finite steps: NaNs injected into training batches are skipped,
counted and logged, and too many in a row stop training with a clear error, leaving the last good
checkpoint intact. Resuming: test_train_resume.py."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from gradprom_jax import data as data_lib
from gradprom_jax.core.image_dtype import to_unit_float
from gradprom_jax.training import train

REPO = Path(__file__).resolve().parents[1]
SMOKE = "configs/default.py:smoke"
LIBRARY_NOISE = ("Downloading and preparing dataset", "Unknown size", "OpenCV is not installed",
                 "Using custom data configuration", "checkpoint_manager.py", "orbax",
                 "Unable to initialize backend")


def run_main(workdir, data_dir, *args, devices=4, cache="off"):
  """(combined stdout+stderr, wall seconds) of a `main.py` run that must exit 0."""
  command = [sys.executable, str(REPO / "experiments" / "main.py"), f"--config={SMOKE}",
             f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *args]
  env = {**os.environ, "GRADPROM_COMPILATION_CACHE": str(cache),
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  started = time.time()
  # One pipe for both streams, as a terminal shows them: lines in the order they were written.
  result = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
  output = result.stdout
  assert result.returncode == 0, output[-3000:]
  return output, time.time() - started


def read_results(workdir):
  return json.loads((Path(workdir) / "results.json").read_text())


def assert_same_scores(got, expected):
  """Every metric of ``expected`` (all floats of results.json) to about 6 digits."""
  scores = [key for key, value in expected.items() if isinstance(value, float)]
  assert "psnr" in scores and "dice" in scores
  for key in scores:
    assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def one_device_results(tmp_path_factory, data_dir):
  workdir = tmp_path_factory.mktemp("one_device") / "run"
  run_main(workdir, data_dir, devices=1)
  return read_results(workdir)


# pmap (the mode that crashed) runs by default; mesh, also covered against one device by
# test_train_step.py, runs with -m slow to keep the default suite short.
@pytest.mark.parametrize("mode", [pytest.param("mesh", marks=pytest.mark.slow), "pmap"])
def test_parallel_mode_trains_evaluates_resumes_and_matches_one_device(
    tmp_path, data_dir, one_device_results, mode):
  workdir = tmp_path / "run"
  run_main(workdir, data_dir, f"--config.parallel={mode}")
  full = read_results(workdir)
  assert_same_scores(full, one_device_results)
  checkpoints = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert checkpoints == [3, 6]

  # Lose the end of the run: it resumes from the step-3 checkpoint and ends where it did.
  shutil.rmtree(workdir / "checkpoints" / "6")
  (workdir / "results.json").unlink()
  run_main(workdir, data_dir, f"--config.parallel={mode}")
  assert_same_scores(read_results(workdir), full)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir):
  """A smoke run with a fresh compilation cache that keeps every program: workdir, output, cache."""
  root = tmp_path_factory.mktemp("first_run")
  cache = root / "jax_cache"
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"   # the smoke compiles are short
  try:
    output, _ = run_main(root / "run", data_dir, cache=cache)
  finally:
    del os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]
  return root / "run", output, cache


def test_console_says_what_happens_and_hides_library_noise(first_run):
  _, output, _ = first_run
  assert "compiling the train step..." in output
  assert "compiled the train step in " in output
  assert "1/6" in output   # the bar moves before the first log step (2)
  for noise in LIBRARY_NOISE:
    assert noise not in output, noise
  last_line = output.replace("\r", "\n").strip().splitlines()[-1]
  assert "results.json" in last_line and "samples.png" in last_line, last_line


def test_rerun_of_a_finished_run_changes_nothing_and_builds_no_dataset(first_run, tmp_path):
  workdir, _, _ = first_run
  outputs = ("results.json", "metrics.jsonl", "samples.png")
  before = {name: (workdir / name).read_bytes() for name in outputs}
  unused_data_dir = tmp_path / "tfds"
  unused_data_dir.mkdir()

  output, _ = run_main(workdir, unused_data_dir)
  assert f"already finished, results in {workdir / 'results.json'}" in output
  assert {name: (workdir / name).read_bytes() for name in outputs} == before
  assert not list(unused_data_dir.iterdir())   # exited before building the dataset


def test_reevaluate_rewrites_the_test_results_once(first_run, data_dir):
  workdir, _, _ = first_run
  before = read_results(workdir)
  output, _ = run_main(workdir, data_dir, "--reevaluate")
  assert "already finished" not in output
  assert_same_scores(read_results(workdir), before)
  records = (workdir / "metrics.jsonl").read_text().splitlines()
  kinds = [json.loads(line)["kind"] for line in records]
  assert kinds.count("test") == 1


def test_second_run_of_a_config_loads_every_compiled_program_from_the_cache(first_run, tmp_path,
                                                                            data_dir):
  _, _, cache = first_run
  cached = sorted(p.name for p in cache.rglob("*-cache"))
  assert cached, f"nothing cached in {cache}"
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  try:
    run_main(tmp_path / "again", data_dir, cache=cache)
  finally:
    del os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]
  assert sorted(p.name for p in cache.rglob("*-cache")) == cached   # all hits, nothing compiled


# ---- Non-finite steps, in process.

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
