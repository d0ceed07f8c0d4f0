"""A trained run applied to new images (`gradprom_jax.inference`), driven as a user drives it:
`experiments/enhance.py` as a subprocess on a workdir as training leaves it.

``enhance.py`` takes its inputs as low quality (outputs are x scale) and, with ``--degrade``, saves
the degraded input beside the output; a workdir without a run is refused in one line.
"""
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
ENHANCE = REPO / "experiments" / "enhance.py"


def _popen(args, **kwargs):
  return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


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


def test_enhance_refuses_a_run_written_by_older_code_in_one_line(untrained_run, tmp_path):
  import json
  import shutil
  old = tmp_path / "old_run"
  shutil.copytree(untrained_run, old)
  stored = json.loads((old / "config.json").read_text())
  del stored["optim"]["ema_decay"]              # a key older code had no notion of
  (old / "config.json").write_text(json.dumps(stored))
  inputs = tmp_path / "inputs"
  _write_images(inputs, 8)
  out = subprocess.run(
      [sys.executable, str(ENHANCE), f"--workdir={old}", f"--input_dir={inputs}",
       f"--output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  (line,) = [l for l in out.stderr.splitlines() if l.startswith("enhance.py: ")]
  assert "older gradprom_jax" in line and "optim.ema_decay" in line
