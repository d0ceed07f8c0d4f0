"""A checkpoint of the earlier layout (a single task's recogniser a bare tree, not under the task's
name) is refused in one line by every reader: resume, the warm starts, the judge, enhance.py."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from configs import default
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.training import pretrained, train
from gradprom_jax.training.checkpoint_layout import has_tasks_by_name
from gradprom_jax.training.checkpointing import (CheckpointRestoreError, Checkpointer,
                                                 SourceRunError, saved_state_of_run)
from gradprom_jax.training.optimizers import make_enhancer_tx, make_recognizer_tx
from gradprom_jax.training.phases import make_phases
from gradprom_jax.training.run_config import check_or_save_config
from gradprom_jax.training.train_state import initial_state
from gradprom_jax.training.training_spec import parse_training_config

REPO = Path(__file__).resolve().parents[1]
IMAGE = (32, 32, 3)   # the smoke config's images


def smoke_config(tmp_path):
  config = default.get_config("smoke")
  config.data.data_dir = str(tmp_path / "tfds")
  return config


def write_run(workdir: Path, config, *, earlier_layout: bool):
  """A finished run's workdir (config.json, model_info.json, one checkpoint) whose train state is
  the current layout's, or the earlier one's: the recogniser's params and optimiser state as bare
  trees and the combiner built for one tree (its state not per task)."""
  spec = parse_training_config(config)
  system = system_from_config(config, channels=IMAGE[-1], num_classes=2)
  phases = make_phases(spec.phases)
  tasks = None if earlier_layout else spec.run.tasks
  state = initial_state(spec.seed, system, IMAGE,
                        make_enhancer_tx(spec.optimizer, phases, spec.run.method, tasks),
                        make_recognizer_tx(spec.optimizer, phases, spec.run.tasks))
  if earlier_layout:
    state = state.replace(recognizer_params=state.recognizer_params["segmentation"],
                          recognizer_opt_state=state.recognizer_opt_state["segmentation"])
  check_or_save_config(workdir, config)
  (workdir / "model_info.json").write_text(json.dumps(
      {"image_shape": list(IMAGE), "num_classes": 2, "class_names": ["background", "lesion"],
       "recognition": "segmentation"}))
  with Checkpointer(workdir / "checkpoints", save_interval_steps=1, async_save=False) as ckpt:
    ckpt.save(6, state, force=True)
  return system


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("earlier")
  system = write_run(root / "run", smoke_config(root), earlier_layout=True)
  return root / "run", system


def assert_one_line_naming_an_earlier_version(error, workdir):
  message = str(error.value)
  assert "\n" not in message and str(workdir) in message
  assert "written by an earlier version of the code" in message and "new workdir" in message


def test_the_layouts_are_told_apart(tmp_path, earlier_run):
  current = tmp_path / "current"
  write_run(current, smoke_config(tmp_path), earlier_layout=False)
  assert has_tasks_by_name(saved_state_of_run(current)[0])
  assert not has_tasks_by_name(saved_state_of_run(earlier_run[0])[0])
  assert has_tasks_by_name({"params": {"w": 0}})   # not a run's train state: not judged


def test_resuming_refuses_it_before_touching_anything(earlier_run):
  workdir, _ = earlier_run
  before = sorted(p.name for p in workdir.iterdir())
  with pytest.raises(CheckpointRestoreError) as error:
    train.train_and_evaluate(smoke_config(workdir.parent), str(workdir))
  assert_one_line_naming_an_earlier_version(error, workdir)
  assert sorted(p.name for p in workdir.iterdir()) == before


@pytest.mark.parametrize("field", ["recognizer_params", "enhancer_params"])
def test_warm_starts_refuse_it(earlier_run, field):
  workdir, system = earlier_run
  with pytest.raises(SourceRunError, match=pretrained.INIT_FROM_KEYS[field]) as error:
    pretrained.load_init_params({field: str(workdir)}, system, IMAGE)
  assert_one_line_naming_an_earlier_version(error, workdir)


def test_the_judge_refuses_it(earlier_run):
  workdir, system = earlier_run
  data_name = smoke_config(workdir.parent).data.name
  with pytest.raises(SourceRunError, match="judge.workdir") as error:
    pretrained.load_judge(str(workdir), system, IMAGE, data_name=data_name)
  assert_one_line_naming_an_earlier_version(error, workdir)


def test_enhance_py_refuses_it_in_one_line(earlier_run, tmp_path):
  workdir, _ = earlier_run
  (tmp_path / "inputs").mkdir()
  result = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "enhance.py"), f"--workdir={workdir}",
       f"--input_dir={tmp_path / 'inputs'}", f"--output_dir={tmp_path / 'out'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("enhance.py: ") and "written by an earlier version of the code" in last
