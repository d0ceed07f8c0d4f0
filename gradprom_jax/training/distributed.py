"""Multi-host start-up: `jax.distributed.initialize()` when (and only when) the run spans hosts.

Call `initialize_distributed(config.distributed)` first thing in `main`, before anything touches
a device. Modes:

* ``"auto"`` (default): initialise only when a multi-process launch is detected: SLURM with more
  than one task (``srun``), Open MPI with more than one rank, or a multi-host Cloud TPU slice. JAX
  then reads the coordinator, process count and id from that environment. A plain single-process
  run does nothing, so laptops and single-GPU jobs need no flags.
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


def detect_cluster() -> str | None:
  """The multi-process launcher found in the environment ("slurm", "ompi", "tpu"), or None.

  >>> detect_cluster() in (None, "slurm", "ompi", "tpu")
  True
  """
  if "SLURM_JOB_ID" in os.environ and _int_env("SLURM_NTASKS") > 1:
    return "slurm"
  if _int_env("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  # Set on every worker VM of a Cloud TPU slice; more than one name means more than one host.
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "tpu"
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
