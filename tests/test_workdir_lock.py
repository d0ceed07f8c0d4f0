"""One live run per workdir: a second `experiments/main.py` on a busy workdir is refused (exit 1, one
line naming the holder), and the claim dies with its holder, so a rerun after SIGKILL resumes at once.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradprom_jax.data.file_lock import FileLock
from gradprom_jax.training.workdir_lock import LOCK_FILENAME, WorkdirLockedError, lock_workdir

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "experiments" / "main.py"


def test_second_claim_names_the_holder_and_release_frees_it(tmp_path):
  lock = lock_workdir(tmp_path)
  with pytest.raises(WorkdirLockedError, match=f"host {socket.gethostname()}, pid {os.getpid()}"):
    lock_workdir(tmp_path)
  lock.release()
  lock_workdir(tmp_path).release()   # A released (or dead) holder leaves a file, not a claim.
  assert (tmp_path / LOCK_FILENAME).exists()


def test_claim_dies_with_a_killed_holder(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\n"
       "from gradprom_jax.training.workdir_lock import lock_workdir\n"
       "lock = lock_workdir(sys.argv[1]); print('held', flush=True); time.sleep(600)",
       str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid}"):
      lock_workdir(tmp_path)
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  lock_workdir(tmp_path).release()


def test_waiting_acquire_gets_the_lock_when_the_holder_releases(tmp_path):
  first, second = FileLock(tmp_path / "x.lock"), FileLock(tmp_path / "x.lock")
  assert first.acquire(blocking=False)
  assert not second.acquire(blocking=False)
  first.release()
  assert second.acquire(blocking=True) and second.held
  second.release()


def _command(workdir: Path, data_dir: Path, num_train_steps: int) -> list[str]:
  return [sys.executable, str(MAIN), "--config", f"{REPO}/configs/default.py:smoke",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
          f"--config.num_train_steps={num_train_steps}", "--config.checkpoint_every=2",
          "--config.log_every=2", "--config.eval_every=100000"]


def _checkpoint_steps(workdir: Path) -> list[int]:
  directory = workdir / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


# Three runs of main.py (~30 s on 2 cores): the refusal and the resume are proved for real.
def test_second_main_is_refused_and_rerun_after_sigkill_resumes(tmp_path):
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
  first = subprocess.Popen(_command(workdir, data_dir, 10**6), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd=REPO)
  try:
    deadline = time.time() + 300
    while not _checkpoint_steps(workdir):   # Training, so the claim is certainly held.
      assert first.poll() is None, f"first run ended with status {first.returncode}"
      assert time.time() < deadline, "first run wrote no checkpoint"
      time.sleep(0.1)

    second = subprocess.run(_command(workdir, data_dir, 10**6), capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert second.returncode == 1, second.stderr[-2000:]
    error_lines = [l for l in second.stderr.splitlines() if "error:" in l]
    assert len(error_lines) == 1, second.stderr[-2000:]
    assert "WorkdirLockedError" in error_lines[0]
    assert f"host {socket.gethostname()}, pid {first.pid}" in error_lines[0]
    assert first.poll() is None, "the refused run must not disturb the live one"
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)

  saved = _checkpoint_steps(workdir)[-1]
  rerun = subprocess.run(_command(workdir, data_dir, saved + 2), capture_output=True, text=True,
                         timeout=300, cwd=REPO)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"Resuming from step {saved}" in rerun.stderr
