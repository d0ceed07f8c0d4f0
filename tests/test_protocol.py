"""The training protocol of a fair comparison: a recogniser trained once on high-quality images
(``method=recognizer_only``), reused as a warm start (``recognizer.init_from``, frozen or fine-tuned)
and as a fixed judge of every run (``judge.workdir``); and the two-stage schedule.

The fast tests check configs, phases and the restore errors on small hand-made checkpoints; the slow
ones run ``experiments/main.py`` on the smoke config.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.configuration.config import base_config
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.inference import load_trained_system
from gradprom_jax.training import evaluation, pretrained
from gradprom_jax.training.checkpointing import Checkpointer, SourceRunError, restore_field_from_run
from gradprom_jax.training.training_spec import phases_from_config

REPO = Path(__file__).resolve().parents[1]
# A failed orbax read leaves a tensorstore callback for a closed asyncio loop; harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# ----------------------------------------------------------------------------- configs and phases


@pytest.mark.parametrize("overrides, message", [
    ({"recognizer.frozen": True}, "random init"),
    ({"method": "recognizer_only", "recognizer.frozen": True}, "train nothing"),
    ({"recognizer.init_from": " "}, "is empty"),
])
def test_contradictory_protocols_are_config_errors(overrides, message):
  config = base_config()
  for key, value in overrides.items():
    group, _, name = key.rpartition(".")
    (config[group] if group else config)[name] = value
  with pytest.raises(ConfigError, match=message):
    validate_config(config)


def test_frozen_recognizer_is_valid_with_a_source():
  config = base_config()
  config.recognizer.frozen, config.recognizer.init_from = True, "runs/rec/seed_{seed}"
  validate_config(config)
  assert "recognizer.pretrain_steps" not in config.recognizer   # recognizer_only is the one way


def test_recognizer_only_trains_the_recognizer_alone_on_high_quality_images():
  config = base_config()
  config.method = "recognizer_only"
  (phase,) = phases_from_config(config)
  assert (phase.start, phase.end) == (0, config.num_train_steps)
  assert phase.enhancer_gradient == "none" and phase.update_recognizer
  assert phase.recognizer_input == "high_quality" and not phase.needs_enhancer


def test_source_path_formats_the_seed():
  assert pretrained.source_path("w/rec/seed_{seed}", 2) == "w/rec/seed_2"
  assert pretrained.source_path("w/rec", 2) == "w/rec"


# ----------------------------------------------------------------------------- restoring a field


def _save_run(workdir: Path, params, step: int = 5) -> None:
  with Checkpointer(workdir / "checkpoints", save_interval_steps=1, async_save=False) as ckpt:
    ckpt.save(step, {"recognizer_params": params, "enhancer_params": {"b": jnp.ones(2)},
                     "step": jnp.int32(step)})


def test_restore_field_reads_the_newest_checkpoint_bitwise(tmp_path):
  params = {"conv": {"kernel": jax.random.normal(jax.random.key(0), (3, 3, 2, 4))}}
  _save_run(tmp_path, jax.tree.map(jnp.zeros_like, params), step=2)
  _save_run(tmp_path, params, step=7)
  restored, step = restore_field_from_run(tmp_path, "recognizer_params",
                                          jax.tree.map(jnp.zeros_like, params), what="x")
  assert step == 7
  assert (np.asarray(restored["conv"]["kernel"]).tobytes()
          == np.asarray(params["conv"]["kernel"]).tobytes())
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  restore_field_from_run(tmp_path / "checkpoints", "recognizer_params", params, what="x")
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before  # read only


def test_restore_field_errors_name_the_key_the_source_and_both_shapes(tmp_path):
  with pytest.raises(SourceRunError, match="recognizer.init_from: no run directory"):
    restore_field_from_run(tmp_path / "absent", "recognizer_params", {}, what="recognizer.init_from")
  (tmp_path / "empty").mkdir()
  with pytest.raises(SourceRunError, match="no checkpoint in"):
    restore_field_from_run(tmp_path / "empty", "recognizer_params", {}, what="x")
  _save_run(tmp_path / "run", {"w": jnp.ones((3, 8))})
  with pytest.raises(SourceRunError, match=r"\['w'\] has shape \(3, 8\) in .*run/checkpoints/5 "
                                           r"but \(3, 16\) in this run's model"):
    restore_field_from_run(tmp_path / "run", "recognizer_params", {"w": jnp.ones((3, 16))},
                           what="x")
  with pytest.raises(SourceRunError, match="another model"):
    restore_field_from_run(tmp_path / "run", "recognizer_params", {"v": jnp.ones((3, 8))}, what="x")
  with pytest.raises(SourceRunError, match="holds no 'judge_params'"):
    restore_field_from_run(tmp_path / "run", "judge_params", {"w": jnp.ones((3, 8))}, what="x")


def test_pipeline_metrics_report_the_judge_under_its_own_prefixes():
  metrics = evaluation.PipelineMetrics("classification", 2, judged=True)
  labels = np.array([0, 1])
  probabilities = {"probabilities": np.array([[0.9, 0.1], [0.2, 0.8]]), "labels": labels}
  outputs = {r: {"classification": probabilities}
             for r in evaluation.REFERENCES + evaluation.JUDGE_REFERENCES}
  for r in evaluation.REFERENCES[:2]:
    outputs[r].update(psnr=np.array([20.0, 30.0]), ssim=np.array([0.5, 0.7]))
  outputs["judge"] = {"classification": {"probabilities": np.array([[0.1, 0.9], [0.2, 0.8]]),
                                         "labels": labels}}
  metrics.update(outputs, np.array([True, True]))   # one of the judge's is wrong
  results = metrics.compute()
  assert results["accuracy"] == results["hq_input_accuracy"] == 1.0
  assert results["judge_accuracy"] == 0.5
  assert results["judge_high_quality_accuracy"] == results["judge_no_enhancement_accuracy"] == 1.0
  assert not any(k.startswith("high_quality_") for k in results)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _main(workdir, data_dir, *overrides):
  command = [sys.executable, str(REPO / "experiments" / "main.py"),
             "--config=configs/default.py:smoke", f"--workdir={workdir}",
             f"--config.data.data_dir={data_dir}", "--config.eval_every=100", *overrides]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                        env={**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"})


def _finished(workdir, data_dir, *overrides) -> dict:
  result = _main(workdir, data_dir, *overrides)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  return json.loads((Path(workdir) / "results.json").read_text())


def _leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def pretrained_recognizer(tmp_path_factory, data_dir):
  """A recognizer_only run of seed 0, in ``.../seed_0``."""
  workdir = tmp_path_factory.mktemp("recognizer") / "seed_0"
  results = _finished(workdir, data_dir, "--config.method=recognizer_only")
  return workdir, results


@pytest.mark.slow
def test_recognizer_only_reports_task_metrics_of_high_quality_images_only(pretrained_recognizer):
  workdir, results = pretrained_recognizer
  assert results["method"] == "recognizer_only"
  assert 0 <= results["hq_input_dice"] <= 1 and "no_enhancement_dice" in results
  assert "psnr" not in results and "dice" not in results   # its enhancer was never trained
  trained = load_trained_system(workdir)
  initial = trained.system.init_params(jax.random.key(0), (32, 32, 3))[0]
  for a, b in zip(_leaves(trained.enhancer_params), _leaves(initial)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_frozen_warm_start_keeps_the_source_recognizer_and_the_judge_scores_it(
    tmp_path, data_dir, pretrained_recognizer):
  source, source_results = pretrained_recognizer
  template = str(source).replace("seed_0", "seed_{seed}")
  checkpoint_files = {p: p.read_bytes() for p in (source / "checkpoints").rglob("*") if p.is_file()}

  results = _finished(tmp_path / "frozen", data_dir, f"--config.recognizer.init_from={template}",
                      "--config.recognizer.frozen=True", f"--config.judge.workdir={template}")

  frozen = load_trained_system(tmp_path / "frozen").recognizer_params
  expected = load_trained_system(source).recognizer_params
  for a, b in zip(_leaves(frozen), _leaves(expected)):
    assert a.tobytes() == b.tobytes()
  # The judge is the same recogniser: same scores as its own run on the same split and images.
  for metric in ("dice", "iou", "pixel_accuracy"):
    assert results[f"judge_high_quality_{metric}"] == pytest.approx(
        source_results[f"hq_input_{metric}"], rel=1e-6)
    assert results[f"judge_no_enhancement_{metric}"] == pytest.approx(
        source_results[f"no_enhancement_{metric}"], rel=1e-6)
    assert results[f"judge_{metric}"] == pytest.approx(results[metric], rel=1e-6)
    assert results[f"hq_input_{metric}"] == pytest.approx(source_results[f"hq_input_{metric}"],
                                                          rel=1e-6)
  assert {p: p.read_bytes() for p in checkpoint_files} == checkpoint_files   # judge untouched


@pytest.mark.slow
def test_fine_tuned_warm_start_starts_from_the_source_and_moves(tmp_path, data_dir,
                                                               pretrained_recognizer):
  source, _ = pretrained_recognizer
  _finished(tmp_path / "tuned", data_dir, f"--config.recognizer.init_from={source}")
  tuned = _leaves(load_trained_system(tmp_path / "tuned").recognizer_params)
  start = _leaves(load_trained_system(source).recognizer_params)
  assert any(a.tobytes() != b.tobytes() for a, b in zip(tuned, start))
  # How far it moved is what a few Adam steps move: it started from the source, not a fresh init.
  fresh = _leaves(load_trained_system(source).system.init_params(jax.random.key(0),
                                                                 (32, 32, 3))[1])
  moved = sum(float(np.abs(a - b).sum()) for a, b in zip(tuned, start))
  from_fresh = sum(float(np.abs(a - b).sum()) for a, b in zip(tuned, fresh))
  assert moved < from_fresh


@pytest.mark.slow
def test_bad_sources_fail_with_one_line_and_nothing_written(tmp_path, data_dir,
                                                            pretrained_recognizer):
  source, _ = pretrained_recognizer
  missing = _main(tmp_path / "a", data_dir, f"--config.recognizer.init_from={tmp_path}/nowhere")
  assert missing.returncode == 1 and "recognizer.init_from: no run directory" in missing.stderr
  mismatch = _main(tmp_path / "b", data_dir, f"--config.recognizer.init_from={source}",
                   "--config.model.recognizer.features=4")
  assert mismatch.returncode == 1
  assert "has shape" in mismatch.stderr and str(source) in mismatch.stderr
  frozen = _main(tmp_path / "c", data_dir, "--config.recognizer.frozen=True")
  assert frozen.returncode == 2 and "random init" in frozen.stderr
  assert not any((tmp_path / name).exists() for name in "abc")


# ----------------------------------------------------------------------------- two_stage


def test_two_stage_is_step_matched_and_skips_the_recognizer_stage_when_frozen():
  config = base_config()
  config.method, config.num_train_steps = "two_stage", 100
  phases = phases_from_config(config)
  assert [(p.name, p.start, p.end) for p in phases] == [("enhancer", 0, 100), ("recognizer", 100, 200)]
  # Each model gets the updates a joint method gives it, so each LR schedule spans exactly those.
  for field, updates in (("enhancer", lambda p: p.enhancer_gradient != "none"),
                         ("recognizer", lambda p: p.update_recognizer)):
    config_joint = base_config()
    config_joint.num_train_steps = 100
    assert (sum(p.end - p.start for p in phases if updates(p))
            == sum(p.end - p.start for p in phases_from_config(config_joint) if updates(p))), field
  config.recognizer.frozen, config.recognizer.init_from = True, "runs/rec"
  assert [p.name for p in phases_from_config(config)] == ["enhancer"]
