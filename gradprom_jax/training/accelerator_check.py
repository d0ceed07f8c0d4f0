"""One warning line when JAX runs on CPU where accelerators are there to use.

A ``pip install -e .`` installs CPU JAX; on a GPU or TPU node the run then trains on the CPU,
hours slower, without an error. JAX's own notice about it is easy to miss among start-up logs (and
absent on a cluster launch), so the training command says it once, with the install to run.
Setting ``JAX_PLATFORMS=cpu`` says the CPU is meant and silences it.
"""
from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import jax

from gradprom_jax.training.distributed import detect_cluster


def visible_accelerator(environ: Mapping[str, str] = os.environ) -> str | None:
  """"gpu" or "tpu" when this node shows one (device files, ``nvidia-smi``, CUDA_VISIBLE_DEVICES).

  >>> visible_accelerator({"CUDA_VISIBLE_DEVICES": "0,1"})
  'gpu'
  """
  if (Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi")
      or environ.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "-1")):
    return "gpu"
  if Path("/dev/accel0").exists():
    return "tpu"
  return None


def unused_accelerator_message(environ: Mapping[str, str] = os.environ) -> str | None:
  """The warning for a CPU-only JAX on a GPU/TPU node or a detected cluster, or None.

  >>> print(unused_accelerator_message({"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "0"}))
  None
  """
  if jax.default_backend() != "cpu" or environ.get("JAX_PLATFORMS", "").strip() == "cpu":
    return None
  accelerator = visible_accelerator(environ)
  cluster = detect_cluster()
  if accelerator is None and cluster is None:
    return None
  where = (f"this node has {accelerator.upper()}s" if accelerator
           else f"this is a {cluster} cluster job")
  install = {"gpu": "pip install -e '.[cuda12]'", "tpu": "pip install -e '.[tpu]'"}.get(
      accelerator, "pip install -e '.[cuda12]' (GPUs) or '.[tpu]' (TPUs)")
  return (f"JAX has only CPU devices, but {where}: install JAX for them with {install}, "
          "or set JAX_PLATFORMS=cpu if the CPU is meant.")


def warn_if_accelerators_unused(environ: Mapping[str, str] = os.environ) -> str | None:
  """Logs :func:`unused_accelerator_message` as one warning line; returns it."""
  message = unused_accelerator_message(environ)
  if message is not None:
    logging.warning(message)
  return message
