"""Tests for gradprom_jax.training.host_agreement: a failure on one host stops every host, at once,
with the same status and line (a real 2-process CPU run of the training command)."""

import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import portpicker
import pytest

from gradprom_jax.training import host_agreement
from gradprom_jax.training.workdir_lock import lock_workdir

REPO = Path(__file__).resolve().parents[1]


def test_outcome_round_trip_keeps_type_and_message_and_cuts_long_ones():
  assert host_agreement.decode_outcome(host_agreement.encode_outcome(None)) is None
  error = OSError("disk full: é")
  assert host_agreement.decode_outcome(host_agreement.encode_outcome(error)) == (
      "OSError", "disk full: é")
  long = host_agreement.encode_outcome(ValueError("x" * 5000))
  assert long.shape == (host_agreement.MESSAGE_BYTES,)
  assert host_agreement.decode_outcome(long)[1] == "x" * (host_agreement.MESSAGE_BYTES - 12)


def test_one_process_raises_its_own_error_unchanged():
  with pytest.raises(ValueError, match="^bad$"):
    with host_agreement.fail_together():
      raise ValueError("bad")


def test_every_host_raises_the_first_failed_hosts_error(monkeypatch):
  outcomes = np.stack([host_agreement.encode_outcome(None),
                       host_agreement.encode_outcome(FileNotFoundError("no data on host 1")),
                       host_agreement.encode_outcome(KeyError("other"))])
  monkeypatch.setattr(host_agreement.jax, "process_count", lambda: 3)
  monkeypatch.setattr(host_agreement.multihost_utils, "process_allgather", lambda x: outcomes)
  with pytest.raises(host_agreement.HostFailureError) as raised:
    with host_agreement.fail_together():
      pass   # This host (0) succeeded; host 1 did not.
  assert (raised.value.process_index, raised.value.error_type, raised.value.message) == (
      1, "FileNotFoundError", "no data on host 1")


def _run_two_hosts(workdirs, timeout: float) -> list[tuple[int, str]]:
  """The training command as processes 0 and 1 of one run; (status, stderr) each, or None status
  for a process still running at the timeout (then killed)."""
  port = portpicker.pick_unused_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu", "GRADPROM_COMPILATION_CACHE": "off"}
  processes = [subprocess.Popen(
      [sys.executable, "experiments/main.py", "--config=configs/default.py:smoke",
       f"--workdir={workdir}", "--config.distributed.mode=explicit",
       f"--config.distributed.coordinator_address=localhost:{port}",
       "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i, workdir in enumerate(workdirs)]
  results = []
  for process in processes:
    try:
      _, err = process.communicate(timeout=timeout)
      results.append((process.returncode, err))
    except subprocess.TimeoutExpired:
      process.kill()
      results.append((None, process.communicate()[1]))
  return results


def _last_lines(results):
  return [err.strip().splitlines()[-1] if err.strip() else "" for _, err in results]


@pytest.mark.slow
def test_workdir_locked_on_process_0_stops_both_processes(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  lock = lock_workdir(workdir)   # another live run holds it; only process 0 takes the lock
  try:
    results = _run_two_hosts([workdir, workdir], timeout=300)
  finally:
    lock.release()
  assert [status for status, _ in results] == [1, 1], _last_lines(results)
  lines = _last_lines(results)
  assert lines[0] == lines[1]
  assert "process 0: WorkdirLockedError: workdir" in lines[0]
  assert "is in use by another run" in lines[0]


@pytest.mark.slow
def test_unwritable_workdir_on_process_1_stops_both_processes(tmp_path):
  not_a_directory = tmp_path / "file"
  not_a_directory.write_text("")
  results = _run_two_hosts([tmp_path / "run", not_a_directory], timeout=300)
  assert [status for status, _ in results] == [1, 1], _last_lines(results)
  lines = _last_lines(results)
  assert lines[0] == lines[1]
  assert "process 1: WorkdirError: Directory" in lines[0]
