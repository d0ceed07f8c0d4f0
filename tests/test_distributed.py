"""Tests for gradprom_jax.training.distributed: detection, argument checks, and a real 2-process CPU run."""

import os
import subprocess
import sys

import portpicker
import pytest

from gradprom_jax.training import distributed

_WORKER = """
import sys
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from gradprom_jax.training.distributed import initialize_distributed

address, process_id = sys.argv[1], int(sys.argv[2])
config = {"mode": "explicit", "coordinator_address": address, "num_processes": 2,
          "process_id": process_id, "initialization_timeout": 240}
assert initialize_distributed(config)
assert initialize_distributed(config)  # Idempotent.
# Each process contributes its id + 1 on each of its 2 devices: sum = 2 * (1 + 2) = 6.
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
local = np.full((jax.local_device_count(),), process_id + 1, np.float32)
global_array = multihost_utils.host_local_array_to_global_array(local, mesh,
                                                                jax.sharding.PartitionSpec("data"))
total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec()))(global_array)
gathered = multihost_utils.process_allgather(np.int32(process_id))
# One write of the whole line: with PYTHONUNBUFFERED print writes piece by piece, and Gloo's log
# lines from another thread could land inside it.
sys.stdout.write(" ".join(map(str, ["RESULT", jax.process_count(), jax.device_count(),
                                    float(total), sorted(gathered.tolist())])) + "\\n")
sys.stdout.flush()
jax.distributed.shutdown()
"""


def _run_workers(port: int, timeout: float) -> list[tuple[int, str, str]]:
  """Runs the two workers; returns (returncode, stdout, stderr) each, killing both on a hang."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  workers = [subprocess.Popen([sys.executable, "-c", _WORKER, f"localhost:{port}", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
  try:
    workers[0].wait(timeout)
    workers[1].wait(timeout)
  except subprocess.TimeoutExpired:
    pass
  finally:
    for worker in workers:
      worker.kill()
  return [(worker.wait(), worker.stdout.read(), worker.stderr.read()) for worker in workers]


def test_two_processes_on_localhost_sum_across_hosts():
  # Generous: on a loaded 2-core CI machine importing jax and compiling takes most of a minute,
  # and a kill here reads as a failure of the code, not of the machine.
  results = _run_workers(portpicker.pick_unused_port(), timeout=300)
  for process_id, (returncode, out, err) in enumerate(results):
    assert returncode == 0, f"worker {process_id} failed:\n{err[-3000:]}"
    result = next(line for line in out.splitlines() if line.startswith("RESULT"))
    assert result.split()[1:] == ["2", "4", "6.0", "[0,", "1]"]


_LAUNCH_VARIABLES = ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
                     "SLURM_PROCID", "SLURM_LOCALID", "OMPI_COMM_WORLD_SIZE",
                     "TPU_WORKER_HOSTNAMES", "KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX")


@pytest.fixture
def no_launcher(monkeypatch):
  for name in _LAUNCH_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_auto_detection(no_launcher):
  monkeypatch = no_launcher
  assert distributed.detect_cluster() is None
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1v-0,t1v-1")
  assert distributed.detect_cluster() == "tpu"


def _srun_step(monkeypatch, tasks: int) -> None:
  for name, value in (("SLURM_JOB_ID", "123"), ("SLURM_NTASKS", str(tasks)),
                      ("SLURM_STEP_NUM_TASKS", str(tasks)), ("SLURM_STEP_NODELIST", "n[1-2]"),
                      ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")):
    monkeypatch.setenv(name, value)


def test_srun_step_of_several_tasks_is_a_cluster(no_launcher):
  _srun_step(no_launcher, tasks=4)
  assert distributed.detect_cluster() == "slurm"
  _srun_step(no_launcher, tasks=1)
  assert distributed.detect_cluster() is None  # A one-task step is a single process.


def test_sbatch_script_without_srun_is_one_process_with_a_warning(no_launcher, caplog):
  # What the batch script's shell of `sbatch --ntasks=4` sees: the job's task count, no step.
  no_launcher.setenv("SLURM_JOB_ID", "123")
  no_launcher.setenv("SLURM_NTASKS", "4")
  with caplog.at_level("WARNING"):
    assert distributed.detect_cluster() is None
  assert [r.getMessage() for r in caplog.records] == [
      "SLURM job of 4 tasks, but this process was not started by srun: running as one process "
      "(launch it with srun to use every task)."]


def test_indexed_kubernetes_job_is_a_cluster(no_launcher):
  no_launcher.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
  assert distributed.detect_cluster() is None  # A plain pod is one process.
  no_launcher.setenv("JOB_COMPLETION_INDEX", "1")
  assert distributed.detect_cluster() == "k8s"


def test_auto_without_cluster_stays_single_process(monkeypatch):
  monkeypatch.setattr(distributed, "detect_cluster", lambda: None)
  assert distributed.initialize_distributed({"mode": "auto"}) is False
  assert distributed.initialize_distributed(None) is False


def test_bad_configs_raise_clear_errors():
  with pytest.raises(ValueError, match="'cluster'"):
    distributed.initialize_distributed({"mode": "cluster"})
  with pytest.raises(ValueError, match="num_processes, process_id"):
    distributed.initialize_distributed({"mode": "explicit", "coordinator_address": "h:1"})
