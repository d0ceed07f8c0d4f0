"""Tests for gradprom_jax.training.accelerator_check: one warning line for CPU JAX on a GPU/TPU
node."""

import pytest

from gradprom_jax.training import accelerator_check


@pytest.fixture
def cpu_node(monkeypatch):
  """A node with no accelerator and no cluster launch, whatever this machine is."""
  monkeypatch.setattr(accelerator_check.Path, "exists", lambda self: False)
  monkeypatch.setattr(accelerator_check.shutil, "which", lambda name: None)
  monkeypatch.setattr(accelerator_check, "detect_cluster", lambda: None)
  monkeypatch.setattr(accelerator_check.jax, "default_backend", lambda: "cpu")
  return monkeypatch


def test_cpu_node_gets_no_warning(cpu_node):
  assert accelerator_check.warn_if_accelerators_unused({}) is None


def test_gpus_visible_with_cpu_jax_warn_with_the_cuda_install(cpu_node, caplog):
  with caplog.at_level("WARNING"):
    message = accelerator_check.warn_if_accelerators_unused({"CUDA_VISIBLE_DEVICES": "0,1"})
  assert [r.getMessage() for r in caplog.records] == [message]
  assert "\n" not in message
  assert message == ("JAX has only CPU devices, but this node has GPUs: install JAX for them with "
                     "pip install -e '.[cuda12]', or set JAX_PLATFORMS=cpu if the CPU is meant.")


def test_nvidia_device_file_or_tool_counts_as_gpus(cpu_node):
  cpu_node.setattr(accelerator_check.Path, "exists", lambda self: str(self) == "/dev/nvidia0")
  assert accelerator_check.visible_accelerator({}) == "gpu"
  cpu_node.setattr(accelerator_check.Path, "exists", lambda self: False)
  cpu_node.setattr(accelerator_check.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
  assert accelerator_check.visible_accelerator({}) == "gpu"


def test_tpu_node_suggests_the_tpu_install(cpu_node):
  cpu_node.setattr(accelerator_check.Path, "exists", lambda self: str(self) == "/dev/accel0")
  assert "pip install -e '.[tpu]'" in accelerator_check.unused_accelerator_message({})


def test_cluster_launch_on_cpu_warns(cpu_node):
  cpu_node.setattr(accelerator_check, "detect_cluster", lambda: "slurm")
  message = accelerator_check.unused_accelerator_message({})
  assert "this is a slurm cluster job" in message and "'.[tpu]'" in message


def test_no_warning_when_cpu_is_meant_or_accelerators_are_used(cpu_node):
  gpus = {"CUDA_VISIBLE_DEVICES": "0"}
  assert accelerator_check.unused_accelerator_message({**gpus, "JAX_PLATFORMS": "cpu"}) is None
  assert accelerator_check.unused_accelerator_message({"CUDA_VISIBLE_DEVICES": "-1"}) is None
  cpu_node.setattr(accelerator_check.jax, "default_backend", lambda: "gpu")
  assert accelerator_check.unused_accelerator_message(gpus) is None
