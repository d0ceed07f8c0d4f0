"""Multi-host start-up: `jax.distributed.initialize()` when (and only when) the run spans hosts.

Call `initialize_distributed(config.distributed)` first thing in `main`, before anything touches
a device. Modes:

* ``"auto"`` (default): initialise only when a multi-process launch is detected: an ``srun`` step
  of more than one task, Open MPI with more than one rank, an indexed Kubernetes Job (or a JobSet,
  whose Jobs are indexed), or a multi-host Cloud TPU slice. JAX then reads the coordinator,
  process count and id from that environment (on Kubernetes it needs ``pip install jax[k8s]``).
  A plain single-process run does nothing, so laptops and single-GPU jobs need no flags; so does
  an sbatch script that runs ``python`` without ``srun`` (the job's ``SLURM_NTASKS`` counts tasks
  that were never started: waiting for them would hang), with one warning line.
* ``"explicit"``: use ``coordinator_address`` ("host:port" of process 0), ``num_processes``,
  ``process_id`` and optionally ``local_device_ids`` and ``initialization_timeout`` (seconds to
  wait for all processes; JAX's default is 300).
* ``"off"``: never initialise.

After initialisation `jax.devices()` lists every host's devices; each host must feed only its own
shard of the data (`grain.sharding.ShardByJaxProcess()` does that). A SLURM launch, one process
per node::

  srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 \\
    python -m gradprom_jax.training.main --config=configs/ph2.py --workdir=$WORK/ph2
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax

from gradprom_jax.configuration.config import DISTRIBUTED_MODES as MODES


def _int_env(name: str) -> int:
  try:
    return int(os.environ.get(name, "0"))
  except ValueError:
    return 0


# What JAX's own SlurmCluster reads; all but SLURM_JOB_ID are set by srun for the tasks of a step,
# not in an sbatch script's own shell.
_SLURM_STEP_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")


def detect_cluster() -> str | None:
  """The multi-process launcher found in the environment ("slurm", "ompi", "k8s", "tpu"), or None.

  SLURM counts the tasks of the ``srun`` step this process belongs to, not the job's: a batch
  script's ``python`` is one process whatever ``--ntasks`` the job asked for.

  >>> detect_cluster() in (None, "slurm", "ompi", "k8s", "tpu")
  True
  """
  if all(name in os.environ for name in _SLURM_STEP_VARIABLES):
    if _int_env("SLURM_STEP_NUM_TASKS") > 1:
      return "slurm"
  elif "SLURM_JOB_ID" in os.environ and _int_env("SLURM_NTASKS") > 1:
    logging.warning("SLURM job of %s tasks, but this process was not started by srun: running as "
                    "one process (launch it with srun to use every task).",
                    os.environ["SLURM_NTASKS"])
  if _int_env("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  # Set on every worker VM of a Cloud TPU slice; more than one name means more than one host.
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "tpu"
  # An indexed Job's pods (each Job of a JobSet) carry their index; JAX reads the count from the
  # Job's spec through the Kubernetes API.
  if "KUBERNETES_SERVICE_HOST" in os.environ and "JOB_COMPLETION_INDEX" in os.environ:
    return "k8s"
  return None


def _get(config: Any, name: str, default: Any = None) -> Any:
  if config is None:
    return default
  if isinstance(config, Mapping):
    return config.get(name, default)
  return getattr(config, name, default)


def initialize_distributed(config: Any = None) -> bool:
  """Initialises `jax.distributed` as `config` asks; returns whether it is initialised afterwards.

  Idempotent: a second call (or one after someone else initialised) only logs. `config` is a
  ConfigDict, dataclass, mapping or None (= auto) with the fields described in the module doc.

  >>> initialize_distributed({"mode": "off"})
  False
  """
  mode = _get(config, "mode", "auto")
  if mode not in MODES:
    raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
  if jax.distributed.is_initialized():
    logging.info("jax.distributed already initialised: process %d of %d",
                 jax.process_index(), jax.process_count())
    return True
  if mode == "off":
    logging.debug("Distributed initialisation off: single process.")
    return False

  kwargs: dict[str, Any] = {}
  if mode == "explicit":
    required = ("coordinator_address", "num_processes", "process_id")
    missing = [name for name in required if _get(config, name) is None]
    if missing:
      raise ValueError(f"distributed mode 'explicit' needs {', '.join(missing)} to be set")
    optional = ("local_device_ids", "initialization_timeout")
    kwargs = {name: _get(config, name) for name in required + optional
              if _get(config, name) is not None}
    source = f"explicit coordinator {kwargs['coordinator_address']}"
  else:
    cluster = detect_cluster()
    if cluster is None:
      logging.debug("No multi-process launch detected: single process.")
      return False
    source = f"auto-detected {cluster}"

  # Cross-process collectives between CPU devices need gloo; the setting leaves GPU/TPU alone.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed initialised (%s): process %d of %d, %d local / %d global devices",
               source, jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
