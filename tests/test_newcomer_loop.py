"""What a new user meets running `experiments/main.py`: both parallel modes end to end, a finished
run left alone on a rerun, a readable console and the persistent compilation cache."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
