"""The training loop (`gradprom_jax.training.train`) killed and resumed: a run interrupted at any
moment and started again ends bitwise identical to an uninterrupted one; SIGTERM saves and exits
within seconds; a corrupt latest checkpoint falls back.

The fast test resumes in-process (a kill right after checkpoint k leaves the same workdir as a
finished run whose checkpoints after k are gone). The slow ones run `experiments/main.py` as a
subprocess and SIGKILL / SIGTERM it for real.
"""
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from gradprom_jax.training import train

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "experiments" / "main.py"


def _saved_state(workdir: Path, step: int):
  """The train state saved at `step`, as nested dicts of numpy arrays (no target needed)."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(workdir / "checkpoints" / str(step) / "state")


def _steps(workdir: Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _assert_bitwise_equal(a, b) -> None:
  leaves_a, leaves_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), f"{jax.tree_util.keystr(path)} differs"


def _results(workdir: Path) -> dict:
  return json.loads((workdir / train.RESULTS_FILENAME).read_text())


@pytest.mark.slow  # Two full runs, ~50-110 s on 2 shared cores; the subprocess tests below too.
def test_resumed_run_is_bitwise_identical_to_uninterrupted(tmp_path):
  config = default.get_config("smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  config.checkpoint_every, config.keep_checkpoints = 2, 10
  uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
  train.train_and_evaluate(config, str(uninterrupted))
  assert _steps(uninterrupted) == [2, 4, 6]

  # The workdir a kill between steps 2 and 4 leaves behind: checkpoint 2, logs up to the kill.
  shutil.copytree(uninterrupted, resumed)
  for later in ("4", "6"):
    shutil.rmtree(resumed / "checkpoints" / later)
  (resumed / train.RESULTS_FILENAME).unlink()
  train.train_and_evaluate(config, str(resumed))

  _assert_bitwise_equal(_saved_state(resumed, 6), _saved_state(uninterrupted, 6))
  assert _results(resumed) == _results(uninterrupted)
  logged = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()
            if "nonfinite" in line]
  assert logged == sorted(set(logged)), "resumed metrics.jsonl repeats steps"


# ---- Through experiments/main.py, for real (slow: each run compiles from scratch).

def _command(workdir: Path, data_dir: Path, *extra: str) -> list[str]:
  return [sys.executable, str(MAIN), "--config", f"{REPO}/configs/default.py:smoke",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          "--config.num_train_steps=10", "--config.checkpoint_every=2", "--config.log_every=1",
          "--config.eval_every=5", "--config.keep_checkpoints=10", *extra]


def _run(command, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _wait_for_checkpoint(process: subprocess.Popen, workdir: Path, timeout=600) -> int:
  """Polls until a finished (not temporary) step directory appears; returns its step."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if process.poll() is not None:
      raise AssertionError(f"run ended (status {process.returncode}) before its first checkpoint")
    directory = workdir / "checkpoints"
    if directory.is_dir() and _steps(workdir):
      return _steps(workdir)[0]
    time.sleep(0.05)
  raise AssertionError("no checkpoint appeared")


def _last_logged_step(workdir: Path) -> int:
  """The newest training step in metrics.jsonl (flushed per line; a half-written line is skipped)."""
  path, steps = workdir / "metrics.jsonl", []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if "nonfinite" in record:
      steps.append(record["step"])
  return max(steps, default=0)


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
  """(workdir, data_dir) of a finished 10-step run, the reference every interrupted run must match."""
  root = tmp_path_factory.mktemp("uninterrupted")
  completed = _run(_command(root / "run", root / "tfds"))
  assert completed.returncode == 0, completed.stderr[-3000:]
  return root / "run", root / "tfds"


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_rerun_is_bitwise_identical(tmp_path, uninterrupted_run):
  reference, _ = uninterrupted_run
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
  process = subprocess.Popen(_command(workdir, data_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, cwd=REPO)
  first = _wait_for_checkpoint(process, workdir)
  # An arbitrary moment (mid-step, mid-save, mid-evaluation...) between the first checkpoint and
  # the last steps, whatever the machine's speed.
  target = random.randint(first, 8)
  while _last_logged_step(workdir) < target and process.poll() is None:
    time.sleep(0.01)
  time.sleep(random.uniform(0.0, 0.3))
  assert process.poll() is None, "the run finished before it could be killed"
  process.send_signal(signal.SIGKILL)
  process.wait()
  lost = _last_logged_step(workdir) - max(_steps(workdir))
  print(f"\nSIGKILL after step {_last_logged_step(workdir)}: latest checkpoint "
        f"{max(_steps(workdir))}, steps lost {lost}")
  # Up to checkpoint_every - 1 steps, plus those taken while the last (asynchronous) save was
  # still being written: a kill then leaves only an unfinished temporary directory.
  assert lost >= 0
  resumed_from = max(_steps(workdir))

  completed = _run(_command(workdir, data_dir))
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert f"Resuming from step {resumed_from}." in completed.stderr   # Not from scratch.
  _assert_bitwise_equal(_saved_state(workdir, 10), _saved_state(reference, 10))
  assert _results(workdir) == _results(reference)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_within_seconds(tmp_path, uninterrupted_run):
  reference, _ = uninterrupted_run
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
  process = subprocess.Popen(_command(workdir, data_dir), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, cwd=REPO)
  _wait_for_checkpoint(process, workdir)
  signalled = time.time()
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=120)
  seconds = time.time() - signalled
  print(f"\nSIGTERM to exit: {seconds:.2f} s")
  assert process.returncode == 143, stderr[-3000:]
  assert "Stopped by SIGTERM" in stderr
  stopped_at = max(_steps(workdir))
  assert stopped_at == _last_logged_step(workdir), "the step reached was not checkpointed"
  assert seconds < 30
  assert not (workdir / train.RESULTS_FILENAME).exists()

  # And the preempted run resumes to the same end as an uninterrupted one.
  completed = _run(_command(workdir, data_dir))
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert f"Resuming from step {stopped_at}" in completed.stderr
  _assert_bitwise_equal(_saved_state(workdir, 10), _saved_state(reference, 10))
  assert _results(workdir) == _results(reference)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path, uninterrupted_run):
  reference, data_dir = uninterrupted_run   # data.data_dir is part of the stored config.
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  (workdir / train.RESULTS_FILENAME).unlink()
  # What a kill during the save of step 8 can leave: checkpoints 2..8, the newest one truncated.
  shutil.rmtree(workdir / "checkpoints" / "10")
  for manifest in (workdir / "checkpoints" / "8").glob("state/**/manifest.ocdbt"):
    manifest.write_bytes(b"")

  completed = _run(_command(workdir, data_dir))
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert "Checkpoint at step 8" in completed.stderr and "falling back" in completed.stderr
  assert "Resuming from step 6" in completed.stderr
  assert (workdir / "checkpoints" / "8.corrupt").is_dir()
  _assert_bitwise_equal(_saved_state(workdir, 10), _saved_state(reference, 10))
  assert _results(workdir) == _results(reference)
