"""Tests for gradprom_jax.training.preemption: signals set the flag, handlers are restored, Ctrl-C twice aborts."""

import os
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.training.checkpointing import Checkpointer
from gradprom_jax.training.preemption import PreemptionGuard


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_sets_flag_and_loop_stops(sig):
  steps_run = []
  with PreemptionGuard() as guard:
    for step in range(100):
      if step == 3:
        os.kill(os.getpid(), sig)
      if guard.should_stop_all_hosts():
        break
      steps_run.append(step)
  assert steps_run == [0, 1, 2]
  assert guard.signal_name == sig.name


def test_previous_handlers_are_restored():
  calls = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
  try:
    with PreemptionGuard():
      assert signal.getsignal(signal.SIGTERM) != previous
    os.kill(os.getpid(), signal.SIGTERM)
    assert calls == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_second_sigint_aborts():
  with PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert guard.should_stop()
    with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
      os.kill(os.getpid(), signal.SIGINT)


def test_request_stop_without_signal():
  guard = PreemptionGuard()
  assert not guard.should_stop()
  guard.request_stop()
  assert guard.should_stop()


_LOOP = """
import sys, time
import jax.numpy as jnp
from gradprom_jax.training.checkpointing import Checkpointer
from gradprom_jax.training.preemption import PreemptionGuard

ckpt = Checkpointer(sys.argv[1], save_interval_steps=1000)
state = {"w": jnp.zeros(3)}
with PreemptionGuard() as guard:
  print("ready", flush=True)
  for step in range(10**9):
    state = {"w": state["w"] + 1}
    time.sleep(0.01)
    if guard.should_stop_all_hosts():
      ckpt.save(step, state, force=True)
      break
ckpt.close()
print("saved", step, flush=True)
"""


def test_sigterm_saves_checkpoint_and_exits_cleanly(tmp_path):
  process = subprocess.Popen([sys.executable, "-c", _LOOP, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == "ready"
  time.sleep(0.2)
  start = time.monotonic()
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=30)
  elapsed = time.monotonic() - start
  assert process.returncode == 0
  assert elapsed < 10, f"took {elapsed:.1f} s to stop"
  saved_step = int(out.split()[-1])
  with Checkpointer(tmp_path, save_interval_steps=1000) as ckpt:
    assert ckpt.latest_step() == saved_step
    restored, _ = ckpt.restore_latest({"w": jnp.zeros(3)})
  assert float(restored["w"][0]) == saved_step + 1


# ---- No host synchronisation per step.

def test_multi_host_agreement_runs_every_k_steps_and_at_synced_steps(monkeypatch):
  from gradprom_jax.training import preemption
  gathered_at = []
  step_now = [0]

  def fake_allgather(flag):
    gathered_at.append(step_now[0])
    return np.array([int(flag), 0])   # This host's flag and a second host that saw nothing.

  monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
  monkeypatch.setattr(preemption.multihost_utils, "process_allgather", fake_allgather)
  stopped_at = None
  with PreemptionGuard(check_every=10) as guard:
    for done in range(1, 41):
      step_now[0] = done
      if done == 13:
        guard.request_stop()
      if guard.should_stop_all_hosts(done, sync=done == 5):
        stopped_at = done
        break
  assert gathered_at == [5, 10, 20]   # Every 10th step and the synced step 5, never in between.
  assert stopped_at == 20             # The stop requested at 13 waits for the next agreement.


# ---- Multi-host: JAX's preemption sync point, JAX's SIGTERM handler left in place.

def test_multi_host_uses_jax_sync_point_and_keeps_jax_handler(monkeypatch):
  from gradprom_jax.training import preemption
  jax_handler = lambda signum, frame: None   # Stands for the handler jax.distributed installs.
  previous = signal.signal(signal.SIGTERM, jax_handler)
  asked_at = []

  def fake_sync_point(step):
    asked_at.append(step)
    return step == 7   # Another host was preempted; the service chose step 7 for everyone.

  def no_allgather(flag):
    raise AssertionError("a device all-gather on the multi-host path")

  monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
  monkeypatch.setattr(preemption, "jax_preemption_service_running", lambda: True)
  monkeypatch.setattr(preemption.multihost_utils, "reached_preemption_sync_point", fake_sync_point)
  monkeypatch.setattr(preemption.multihost_utils, "process_allgather", no_allgather)
  try:
    stopped_at = None
    with PreemptionGuard(check_every=10) as guard:
      assert signal.getsignal(signal.SIGTERM) is jax_handler
      for done in range(1, 41):
        if guard.should_stop_all_hosts(done, sync=done % 5 == 0):
          stopped_at = done
          break
    assert signal.getsignal(signal.SIGTERM) is jax_handler
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert asked_at == list(range(1, 8))   # Every step: the check is local, no collective.
  assert stopped_at == 7
  assert guard.signal_name == "SIGTERM" and guard.should_stop()


_TWO_HOST_LOOP = """
import signal, sys, time
import jax
from gradprom_jax.training.distributed import initialize_distributed
from gradprom_jax.training.preemption import PreemptionGuard

address, process_id = sys.argv[1], int(sys.argv[2])
initialize_distributed({"mode": "explicit", "coordinator_address": address, "num_processes": 2,
                        "process_id": process_id})
# No all-gather of the flags in this run: only JAX's sync point can stop it.
with PreemptionGuard(check_every=10**9) as guard:
  print("ready", flush=True)
  for step in range(1, 10**9):
    time.sleep(0.01)
    if guard.should_stop_all_hosts(step):
      break
print("stopped", step, guard.signal_name, flush=True)
jax.distributed.shutdown()
"""


@pytest.mark.slow
def test_sigterm_on_one_host_stops_both_at_the_same_step():
  import portpicker
  port = portpicker.pick_unused_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  hosts = [subprocess.Popen([sys.executable, "-c", _TWO_HOST_LOOP, f"localhost:{port}", str(i)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    for host in hosts:
      assert host.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    hosts[1].send_signal(signal.SIGTERM)   # Only process 1 is preempted.
    outputs = [host.communicate(timeout=30) for host in hosts]
  finally:
    for host in hosts:
      host.kill()
  for host, (out, err) in zip(hosts, outputs):
    assert host.returncode == 0, err[-3000:]
  stops = [out.split()[-3:] for out, _ in outputs]
  assert stops[0] == stops[1]   # The same step on both hosts.
  assert stops[0][0] == "stopped" and stops[0][2] == "SIGTERM"
