"""Shrunk end-to-end runs of `experiments/main.py`: every workdir output, both tasks, and multi-host."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest
from PIL import Image

from gradprom_jax.inference import load_trained_system
from gradprom_jax.training.metric_logging import read_metrics

REPO = Path(__file__).resolve().parents[1]
TASK_METRICS = {"segmentation": ("dice", "iou", "pixel_accuracy"),
                "classification": ("accuracy", "balanced_accuracy", "macro_f1", "auc")}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def run_main(config, workdir, data_dir, *overrides, devices=4, env=None, wait=True):
  command = [sys.executable, str(REPO / "experiments" / "main.py"), f"--config={config}",
             f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *overrides]
  environment = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                 "--xla_backend_optimization_level=0", **(env or {})}
  process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  if not wait:
    return process
  output, _ = process.communicate(timeout=600)
  assert process.returncode == 0, output[-3000:]
  return output


def final_params(workdir):
  trained = load_trained_system(workdir)
  return {"enhancer_params": trained.enhancer_params,
          "recognizer_params": trained.recognizer_params, "step": trained.step}


@pytest.mark.parametrize("option, recognition", [("smoke", "segmentation"),
                                                 ("classification,smoke", "classification")])
def test_main_writes_every_output(tmp_path, data_dir, option, recognition):
  workdir = tmp_path / "run"
  run_main(f"configs/default.py:{option}", workdir, data_dir)

  results = json.loads((workdir / "results.json").read_text())
  assert results["method"] == "gradprom" and results["seed"] == 0 and results["num_train_steps"] == 6
  for prefix in ("", "no_enhancement_", "hq_input_"):
    for name in TASK_METRICS[recognition]:
      assert f"{prefix}{name}" in results, f"{prefix}{name} missing"
  for prefix in ("", "no_enhancement_"):
    assert 5 < results[f"{prefix}psnr"] < 60 and 0 < results[f"{prefix}ssim"] <= 1

  train = read_metrics(workdir / "metrics.jsonl", "train")
  assert [r["step"] for r in train] == [2, 4, 6]
  for key in ("enhancement_loss", "task_loss", "cosine", "gate", "gate_open_rate",
              "enhancement_grad_norm", "task_grad_norm", "enhancer_lr", "recognizer_lr",
              "steps_per_second"):
    assert all(np.isfinite(r[key]) for r in train), key
  assert [r["step"] for r in read_metrics(workdir / "metrics.jsonl", "val")] == [3, 6]
  assert len(read_metrics(workdir / "metrics.jsonl", "test")) == 1

  assert json.loads((workdir / "config.json").read_text())["task"]["recognition"] == recognition
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
  with Image.open(workdir / "samples.png") as image:
    assert image.format == "PNG" and image.width > 100 and image.height > 50
  check_enhance_cli(workdir, tmp_path, recognition)


def check_enhance_cli(workdir, tmp_path, recognition):
  """experiments/enhance.py applies the trained run to a folder of images."""
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(inputs / f"{name}.png")
  output = tmp_path / "enhanced"
  result = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "enhance.py"), f"--workdir={workdir}",
       f"--input_dir={inputs}", f"--output_dir={output}", "--degrade"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ("a", "b"):
    with Image.open(output / "enhanced" / f"{name}.png") as image:
      assert image.size == (32, 32)   # degraded, then enhanced back to the input size
  if recognition == "segmentation":
    assert sorted(p.name for p in (output / "masks").iterdir()) == ["a.png", "b.png"]
  else:
    lines = (output / "predictions.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("image,predicted,p_")


@pytest.mark.slow   # a minute; tests/test_distributed.py's 2-process run stays in the default suite
def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path, data_dir):
  """Multi-host data parallelism through jax.distributed (gloo CPU collectives on localhost)."""
  overrides = ["--config.num_train_steps=4", "--config.eval_every=100"]
  run_main("configs/default.py:smoke", tmp_path / "single", data_dir, *overrides, devices=4)

  port = portpicker.pick_unused_port()
  processes = [
      run_main("configs/default.py:smoke", tmp_path / "multi", data_dir, *overrides,
               "--config.distributed.mode=explicit",
               f"--config.distributed.coordinator_address=localhost:{port}",
               "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
               devices=2, wait=False)
      for i in range(2)]
  for process in processes:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]

  single, multi = final_params(tmp_path / "single"), final_params(tmp_path / "multi")
  assert int(single["step"]) == int(multi["step"]) == 4
  for a, b in zip(*(jax.tree.leaves(p) for p in (single, multi))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  single_results = json.loads((tmp_path / "single" / "results.json").read_text())
  multi_results = json.loads((tmp_path / "multi" / "results.json").read_text())
  for key in ("psnr", "ssim", "dice", "no_enhancement_dice", "hq_input_dice"):
    assert multi_results[key] == pytest.approx(single_results[key], rel=1e-5), key



def test_main_trains_two_tasks_on_one_enhancer_and_writes_per_task_metrics(tmp_path, data_dir):
  """configs/default.py:multitask: lesion masks and diagnosis, each key suffixed with its task."""
  workdir = tmp_path / "run"
  run_main("configs/default.py:multitask,smoke", workdir, data_dir,
           "--config.gate_reliability_every=6", "--config.task.classification.weight=0.5")

  results = json.loads((workdir / "results.json").read_text())
  for prefix in ("", "no_enhancement_", "hq_input_"):
    for task, names in TASK_METRICS.items():
      for name in names:
        assert f"{prefix}{name}/{task}" in results, f"{prefix}{name}/{task} missing"
        assert f"{prefix}{name}" not in results
  assert 5 < results["psnr"] < 60 and 0 < results["ssim"] <= 1   # one enhancer: plain keys

  train = read_metrics(workdir / "metrics.jsonl", "train")
  for key in ("task_loss", "task_grad_norm", "cosine", "gate", "gate_open_rate"):
    for task in TASK_METRICS:
      assert all(np.isfinite(r[f"{key}/{task}"]) for r in train if "enhancement_loss" in r), key
  probes = [r for r in train if "gate_probe/halves_agree/classification" in r]
  assert [r["step"] for r in probes] == [6]
  validation = read_metrics(workdir / "metrics.jsonl", "val")[-1]
  assert {"dice/segmentation", "auc/classification", "psnr"} <= set(validation)

  info = json.loads((workdir / "model_info.json").read_text())
  assert info["num_classes"] == {"segmentation": 2, "classification": 3}
  trained = load_trained_system(workdir)
  assert set(trained.recognizer_params) == {"segmentation", "classification"}

  inputs, output = tmp_path / "inputs", tmp_path / "enhanced"
  inputs.mkdir()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(inputs / "a.png")
  result = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "enhance.py"), f"--workdir={workdir}",
       f"--input_dir={inputs}", f"--output_dir={output}", "--degrade"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (output / "masks" / "a.png").exists()
  header = (output / "predictions.csv").read_text().splitlines()[0]
  assert header.startswith("image,predicted/classification,p_common_nevus/classification")


@pytest.mark.slow
def test_class_weighted_run_on_four_devices_in_micro_batches_equals_one_device(tmp_path, data_dir):
  """Σ w·ℓ / Σ w is the global batch's, whatever the devices (pmap) and micro-batches."""
  overrides = ["--config.num_train_steps=4", "--config.eval_every=100", "--config.batch_size=8",
               "--config.task.class_weights=balanced"]
  run_main("configs/default.py:classification,smoke", tmp_path / "single", data_dir, *overrides,
           devices=1)
  run_main("configs/default.py:classification,smoke", tmp_path / "split", data_dir, *overrides,
           "--config.parallel=pmap", "--config.accumulate_steps=2", devices=4)
  single, split = final_params(tmp_path / "single"), final_params(tmp_path / "split")
  for a, b in zip(*(jax.tree.leaves(p) for p in (single, split))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  single_results = json.loads((tmp_path / "single" / "results.json").read_text())
  split_results = json.loads((tmp_path / "split" / "results.json").read_text())
  assert split_results["psnr"] == pytest.approx(single_results["psnr"], rel=1e-5)
