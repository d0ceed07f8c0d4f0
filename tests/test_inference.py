"""What a new user meets first, driven as they drive it: `experiments/main.py` and `enhance.py` as
subprocesses with `:smoke` configs, a tmp workdir and a tmp data dir.

A task its recogniser cannot do, an enhancer that cannot make the degradation's scale and a model
option of another model are refused as one line with exit status 2; a workdir of another config is
refused before the dataset is built; ``--help`` lists the config keys with their documentation and
exits 0; ``enhance.py`` takes its inputs as low quality (outputs are x scale) and, with ``--degrade``,
saves the degraded input beside the output.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import default
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.training.checkpointing import Checkpointer
from gradprom_jax.training.pretrained import MODEL_INFO_FILENAME
from gradprom_jax.training.run_config import check_or_save_config
from gradprom_jax.training.train import _write_json
from gradprom_jax.training.train_state import initial_state
from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                 recognizer_tx_from_config)

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "experiments" / "main.py"
ENHANCE = REPO / "experiments" / "enhance.py"

# name -> (config, extra flags, a fragment the one-line error must contain).
REFUSED = {
    "classification_with_a_segmenter": (
        "configs/image_folder.py", ["--config.task.recognition=classification"],
        "task.recognition='classification' needs a classification model (resnet), but "
        "model.recognizer.name='unet_segmenter' is a segmentation model: use the config file's "
        "':classification' option (e.g. configs/image_folder.py:classification)"),
    "segmentation_with_a_classifier": (
        "configs/default.py:classification,smoke", ["--config.task.recognition=segmentation"],
        "needs a segmentation model (unet_segmenter), but model.recognizer.name='resnet'"),
    "renamed_recognizer_keeps_the_old_options": (
        "configs/default.py:smoke", ["--config.task.recognition=classification",
                                     "--config.model.recognizer.name=resnet"],
        "model.recognizer.num_levels is not an option of recognizer 'resnet' (its options: "),
    "two_tasks_with_one_recognizer": (
        "configs/default.py:smoke", ["--config.task.recognition=segmentation,classification"],
        "names 2 tasks, but this config has one recogniser (model.recognizer): use a multi-task "
        "config (e.g. configs/ph2.py:multitask)"),
    "negative_task_weight_of_one_task": (
        "configs/default.py:multitask,smoke", ["--config.task.classification.weight=-1"],
        "task.classification.weight=-1.0 must be a number >= 0"),
    "edsr_cannot_make_scale_5": (
        "configs/default.py:smoke", ["--config.task.degradation=downsample(scale=5)",
                                     "--config.data.image_size=(30, 30)"],
        "model.enhancer.name='edsr' cannot enhance task.degradation='downsample(scale=5)': EDSR "
        "scale must be 1, 3 or a power of two, got 5."),
}


def _popen(args, **kwargs):
  return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
  """Every command at once (start-up dominates). {name: (stdout, stderr, status, workdir, tfds)}."""
  root = tmp_path_factory.mktemp("cli")
  commands = {}
  for name, (config, extra, _) in REFUSED.items():
    commands[name] = [MAIN, f"--config={config}", f"--workdir={root / name}",
                      f"--config.data.data_dir={root / name}_tfds",
                      f"--config.data.manual_dir={root / 'nowhere'}", *extra]
  # A workdir holding another config's run, and no dataset built yet.
  other = default.get_config("smoke")
  other.seed = 1
  check_or_save_config(root / "other_config", other)
  commands["other_config"] = [MAIN, "--config=configs/default.py:smoke",
                              f"--workdir={root / 'other_config'}",
                              f"--config.data.data_dir={root / 'other_config_tfds'}"]
  commands["help"] = [MAIN, "--help"]
  commands["help_of_a_config"] = [MAIN, "--help", "--config", "configs/ph2.py:classification,smoke"]
  commands["help_of_a_multitask_config"] = [MAIN, "--help", "--config", "configs/ph2.py:multitask"]
  processes = {name: _popen(command, env={**os.environ, "JAX_LOG_COMPILES": "1"})
               for name, command in commands.items()}
  outputs = {}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    outputs[name] = (stdout, stderr, process.returncode, root / name, root / f"{name}_tfds")
  return outputs


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_models_that_do_not_fit_are_one_line_exit_2(cli_runs, name):
  stdout, stderr, status, workdir, data_dir = cli_runs[name]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert status == 2, stderr[-2000:]
  assert len(lines) == 1, stderr[-2000:]   # Also: nothing compiled (JAX_LOG_COMPILES).
  assert REFUSED[name][2] in lines[0]
  assert not stdout and not workdir.exists() and not data_dir.exists()


def test_workdir_of_another_config_is_refused_before_the_dataset_is_built(cli_runs):
  _, stderr, status, workdir, data_dir = cli_runs["other_config"]
  assert status == 2, stderr[-2000:]
  assert "holds a run with a different config" in stderr and "seed: 1 -> 0" in stderr
  assert not data_dir.exists() or not any(data_dir.iterdir())
  assert [p.name for p in workdir.iterdir()] == ["config.json"]


def test_help_lists_the_config_keys_with_their_comments_and_exits_0(cli_runs):
  stdout, stderr, status, _, _ = cli_runs["help"]
  assert status == 0, stderr[-2000:]
  assert "configs/ph2.py:classification,smoke" in stdout   # How config options combine.
  assert "  # Global batch size over all devices and hosts.\n  batch_size = 8\n" in stdout
  assert "  data.patch_size = [96, 128]" in stdout
  assert "# Low quality simulated on device from the high-quality batch" in stdout
  assert "--helpfull" in stdout


def test_help_with_a_config_shows_its_values(cli_runs):
  stdout, stderr, status, _, _ = cli_runs["help_of_a_config"]
  assert status == 0, stderr[-2000:]
  assert "with the values of configs/ph2.py:classification,smoke:" in stdout
  assert "  model.recognizer.name = 'resnet'" in stdout
  assert "  task.recognition = 'classification'" in stdout
  assert "  num_train_steps = 6" in stdout


def test_help_of_a_multitask_config_documents_each_task_and_its_recogniser(cli_runs):
  stdout, stderr, status, _, _ = cli_runs["help_of_a_multitask_config"]
  assert status == 0, stderr[-2000:]
  assert "  task.recognition = 'segmentation,classification'" in stdout
  assert "  model.recognizers.classification.name = 'resnet'" in stdout
  assert "  # λ_k = task_weight × weight" in stdout and "  task.classification.weight = 1.0" in stdout
  assert "task.segmentation.gradprom.threshold = None" in stdout
  assert "model.recognizer.name" not in stdout   # one recogniser per task, none shared
  assert "  data.patch_size = None" in stdout      # whole images: the diagnosis needs the lesion


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
  """A workdir as training leaves it (config.json, model_info.json, a checkpoint), untrained."""
  workdir = tmp_path_factory.mktemp("untrained_run")
  config = default.get_config("smoke")   # x4 super-resolution + segmentation, 32x32 images.
  image_shape = (32, 32, 3)
  system = system_from_config(config, channels=3, num_classes=2)
  phases = phases_from_config(config)
  state = initial_state(config.seed, system, image_shape, enhancer_tx_from_config(config, phases),
                        recognizer_tx_from_config(config, phases))
  check_or_save_config(workdir, config)
  _write_json(workdir / MODEL_INFO_FILENAME, {"image_shape": list(image_shape), "num_classes": 2,
                                             "class_names": [], "recognition": "segmentation"})
  with Checkpointer(workdir / "checkpoints", save_interval_steps=1, async_save=False) as saver:
    saver.save(1, state)
  return workdir


def _enhance(workdir, inputs, output, *extra):
  process = _popen([ENHANCE, f"--workdir={workdir}", f"--input_dir={inputs}",
                    f"--output_dir={output}", *extra])
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  return stdout


def _write_images(folder, size):
  folder.mkdir()
  rng = np.random.default_rng(0)
  for name in ("a", "b"):
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{name}.png")


def test_enhance_takes_inputs_as_low_resolution(untrained_run, tmp_path):
  _write_images(tmp_path / "small", 8)
  stdout = _enhance(untrained_run, tmp_path / "small", tmp_path / "out")
  assert "taken as low quality, enhanced to x4 their size" in stdout
  for name in ("a", "b"):
    assert Image.open(tmp_path / "out" / "enhanced" / f"{name}.png").size == (32, 32)
  assert not (tmp_path / "out" / "degraded").exists()


def test_enhance_degrade_saves_the_degraded_input_beside_the_output(untrained_run, tmp_path):
  _write_images(tmp_path / "high_quality", 32)
  _enhance(untrained_run, tmp_path / "high_quality", tmp_path / "out", "--degrade")
  for name in ("a", "b"):
    assert Image.open(tmp_path / "out" / "degraded" / f"{name}.png").size == (8, 8)
    assert Image.open(tmp_path / "out" / "enhanced" / f"{name}.png").size == (32, 32)


def test_readme_says_how_enhance_treats_its_inputs():
  readme = (REPO / "README.md").read_text()
  section = readme[readme.index("### Applying a trained run to new images"):]
  assert "low-resolution" in section and "×scale" in section
  assert "--degrade" in section and "degraded/" in section


@pytest.mark.parametrize("what", ["workdir_without_a_run", "missing_input_dir"])
def test_enhance_refuses_a_workdir_without_a_run_in_one_line(tmp_path, what):
  inputs = tmp_path / ("inputs" if what == "workdir_without_a_run" else "missing")
  if what == "workdir_without_a_run":
    inputs.mkdir()
  out = subprocess.run(
      [sys.executable, str(ENHANCE), f"--workdir={tmp_path}", f"--input_dir={inputs}",
       f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  assert "Traceback" not in out.stderr
  expected = ("config.json not found: is" if what == "workdir_without_a_run"
              else "is not a folder")
  (line,) = [l for l in out.stderr.splitlines() if l.startswith("enhance.py: ")]
  assert expected in line
