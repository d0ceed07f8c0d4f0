"""The training entry point (`experiments/main.py`, `gradprom_jax.training.main`) driven as a user
drives it, as subprocesses with `:smoke` configs, a tmp workdir and a tmp data dir.

Bad commands fail fast: one line on stderr, exit status 2, nothing written to the workdir or the
data dir and nothing compiled; that covers a task its recogniser cannot do, an enhancer that cannot
make the degradation's scale and a model option of another model. A workdir holding another config
(refused before the dataset is built), one that cannot be written, checkpoints that do not restore
and missing raw files are refused with a message naming what is wrong (exit status 2 for the
command, 1 for the files). ``--help`` lists the config keys with their documentation and exits 0.
"""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags, logging as absl_logging

from configs import default
from gradprom_jax.configuration import config_validation
from gradprom_jax.configuration.config_validation import ConfigError, unknown_key_message
from gradprom_jax.training import main as main_module, train
from gradprom_jax.training.checkpointing import WorkdirError, ensure_writable_directory
from gradprom_jax.training.run_config import check_or_save_config

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "experiments" / "main.py"

# name -> (extra flags, a fragment the one-line error must contain). The test session simulates 4
# CPU devices (conftest), which subprocesses inherit.
BAD_COMMANDS = {
    "unknown_key": (["--config.optim.enhancer_rl=1e-3"],
                    "unknown config key 'optim.enhancer_rl': did you mean 'optim.enhancer_lr'?"),
    "unknown_top_level_key": (["--config.metod=joint"], "did you mean 'method'"),
    "bad_value_type": (["--config.batch_size=four"], "--config.batch_size=four"),
    "unknown_method": (["--config.method=gradpromm"], "method='gradpromm' is not one of "),
    "unknown_dataset": (["--config.data.name=ph3"], "data.name='ph3' is not one of"),
    "scale_does_not_divide": (["--config.task.degradation=downsample(scale=3)"],
                              "scale 3, which does not divide the image size 32x32"),
    "batch_not_divisible": (["--config.batch_size=6"],
                            "batch_size=6 is not divisible by the number of devices (4)"),
    "unknown_config_option": ([], "Unknown config option(s) ['smok']"),
}
# Models that do not fit the task or the degradation: name -> (config, extra flags, a fragment of
# the one-line error).
REFUSED = {
    "classification_with_a_segmenter": (
        "configs/image_folder.py", ["--config.task.recognition=classification"],
        "task.recognition='classification' needs a model with logits per image (resnet), but "
        "model.recognizer.name='unet_segmenter' gives logits per pixel: start from a config for "
        "classification (a config file's default or its ':classification' option"),
    "segmentation_with_a_classifier": (
        "configs/default.py:classification,smoke", ["--config.task.recognition=segmentation"],
        "needs a model with logits per pixel (unet_segmenter), but model.recognizer.name='resnet'"),
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


def _command(workdir: Path, data_dir: Path, *extra: str, option: str = "smoke") -> list[str]:
  return [sys.executable, str(MAIN), "--config", f"{REPO}/configs/default.py:{option}",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *extra]


def _other_config(data_dir: Path):
  other = default.get_config("smoke")
  other.data.data_dir, other.seed, other.method = str(data_dir), 1, "joint"
  return other


@pytest.fixture(scope="module")
def main_runs(tmp_path_factory):
  """Runs every failing command at once (they are independent; start-up time dominates).

  Returns {name: (stdout, stderr, status, workdir)}. JAX_LOG_COMPILES=1 makes JAX log a WARNING line
  for every compilation (checked by hand on a good run), so "exactly one line on stderr" also
  proves that nothing was compiled.
  """
  root = tmp_path_factory.mktemp("main_runs")
  commands = {}
  for name, (extra, _) in BAD_COMMANDS.items():
    option = "smok" if name == "unknown_config_option" else "smoke"
    commands[name] = (root / name, _command(root / name, root / "tfds", *extra, option=option))
  for name, (config, extra, _) in REFUSED.items():
    commands[name] = (root / name, [
        sys.executable, str(MAIN), f"--config={config}", f"--workdir={root / name}",
        f"--config.data.data_dir={root / name}_tfds",
        f"--config.data.manual_dir={root / 'nowhere'}", *extra])
  commands["help"] = (None, [sys.executable, str(MAIN), "--help"])
  for name, config in (("help_of_a_config", "configs/ph2.py:classification,smoke"),
                       ("help_of_a_multitask_config", "configs/ph2.py:multitask")):
    commands[name] = (None, [sys.executable, str(MAIN), "--help", "--config", config])
  # A workdir holding a run of another config.
  check_or_save_config(root / "other_config", _other_config(root / "tfds_other"))
  commands["other_config"] = (root / "other_config",
                              _command(root / "other_config", root / "tfds_other"))
  # A workdir that cannot be created (as root, chmod does not bite; a file in the way does).
  (root / "a_file").write_text("not a directory")
  commands["unwritable"] = (root / "a_file" / "run",
                            _command(root / "a_file" / "run", root / "tfds_unwritable"))
  # Checkpoints exist but none restores: never start from scratch.
  smoke = default.get_config("smoke")
  smoke.data.data_dir = str(root / "tfds_unrestorable")
  check_or_save_config(root / "unrestorable", smoke)
  (root / "unrestorable" / "checkpoints" / "2" / "state").mkdir(parents=True)
  (root / "unrestorable" / "checkpoints" / "2" / "state" / "garbage").write_text("x")
  commands["unrestorable"] = (root / "unrestorable",
                              _command(root / "unrestorable", root / "tfds_unrestorable"))
  # A dataset whose raw files are not where the config says.
  commands["manual_download"] = (root / "manual_download", [
      sys.executable, str(MAIN), "--config", f"{REPO}/configs/image_folder.py:smoke",
      f"--workdir={root / 'manual_download'}", f"--config.data.manual_dir={root / 'nowhere'}",
      f"--config.data.data_dir={root / 'tfds_manual'}"])
  processes = {
      name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env={**os.environ, "JAX_LOG_COMPILES": "1"})
      for name, (_, command) in commands.items()}
  outputs = {}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    outputs[name] = (stdout, stderr, process.returncode, commands[name][0])
  return outputs


@pytest.mark.parametrize("name", sorted(BAD_COMMANDS))
def test_bad_command_is_one_line_exit_2_and_writes_nothing(main_runs, name):
  stdout, stderr, status, workdir = main_runs[name]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert status == 2, stderr[-2000:]
  assert len(lines) == 1, stderr[-2000:]
  assert lines[0].startswith(f"{MAIN}: error: ")
  assert BAD_COMMANDS[name][1] in lines[0]
  assert not stdout
  assert not workdir.exists()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_models_that_do_not_fit_are_one_line_exit_2(main_runs, name):
  stdout, stderr, status, workdir = main_runs[name]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert status == 2, stderr[-2000:]
  assert len(lines) == 1, stderr[-2000:]   # Also: nothing compiled (JAX_LOG_COMPILES).
  assert REFUSED[name][2] in lines[0]
  assert not stdout and not workdir.exists() and not Path(f"{workdir}_tfds").exists()


def test_config_errors_are_raised_before_jit_and_before_the_workdir(tmp_path, monkeypatch):
  def no_jit(*args, **kwargs):
    raise AssertionError("compiled before the config was checked")

  monkeypatch.setattr(jax, "jit", no_jit)
  monkeypatch.setattr(jax, "pmap", no_jit)
  # MedMNIST keeps its native 28x28 size, which only the built dataset reveals; 3 does not divide it.
  manual_dir = tmp_path / "medmnist"
  manual_dir.mkdir()
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
  labels = np.array([[0], [1], [0], [1]])
  np.savez(manual_dir / "tiny.npz", **{f"{split}_{kind}": array for split in ("train", "val", "test")
                                       for kind, array in (("images", images), ("labels", labels))})
  config = default.get_config("classification,smoke")
  config.data.update(name="medmnist", manual_dir=str(manual_dir), medmnist_file="tiny.npz",
                     image_size=None, num_channels=1, data_dir=str(tmp_path / "tfds"))
  config.task.degradation = "downsample(scale=3)"
  with pytest.raises(ConfigError, match=r"data.image_size=\(28, 28\) \(the dataset's native size\)"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_run_validates_its_config_once(tmp_path, monkeypatch):
  """The entry point parses the config into one experiment, checked once, and passes it down: no
  layer validates it again (the loop itself is stubbed out: it reads no config)."""
  validate_config, calls = config_validation.validate_config, []

  def counted(*args, **kwargs):
    calls.append(kwargs)
    return validate_config(*args, **kwargs)

  for module in list(sys.modules.values()):   # wherever it was imported by name
    if (getattr(module, "__name__", "").startswith("gradprom_jax")
        and getattr(module, "validate_config", None) is validate_config):
      monkeypatch.setattr(module, "validate_config", counted)
  monkeypatch.setattr(train, "_train_and_evaluate_locked", lambda run: {})
  monkeypatch.setattr(main_module, "hide_library_noise", lambda: None)
  monkeypatch.setenv("GRADPROM_COMPILATION_CACHE", "off")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))   # where data.data_dir=None builds
  verbosity = absl_logging.get_verbosity()
  flags.FLAGS(["main", f"--config={REPO}/configs/default.py:smoke",
               f"--workdir={tmp_path / 'run'}"])
  try:
    main_module.main(["main"])
  finally:
    flags.FLAGS.unparse_flags()
    absl_logging.set_verbosity(verbosity)
  assert len(calls) == 1 and (tmp_path / "run").is_dir()


def test_unknown_key_message_names_the_group_and_near_keys():
  config = default.get_config("smoke")
  assert unknown_key_message(config, "gradprom.treshold") == (
      "unknown config key 'gradprom.treshold': did you mean 'gradprom.threshold'? "
      "Keys of 'gradprom': cosine_ema, gradient_ema, granularity, mode, task_scale, threshold")
  assert "'seed' is a value" in unknown_key_message(config, "seed.value")
  assert unknown_key_message(config, "model.enhancer.features") is None


def test_workdir_of_another_config_is_refused_listing_the_keys_before_the_dataset_is_built(
    main_runs):
  _, stderr, status, workdir = main_runs["other_config"]
  assert status == 2, stderr[-2000:]
  assert "holds a run with a different config" in stderr
  assert "method: 'joint' -> 'gradprom'" in stderr
  assert "seed: 1 -> 0" in stderr
  assert "--config.overwrite=True" in stderr
  assert "Compiling" not in stderr
  assert [p.name for p in workdir.iterdir()] == ["config.json"]
  assert json.loads((workdir / "config.json").read_text())["seed"] == 1
  data_dir = workdir.parent / "tfds_other"
  assert not data_dir.exists() or not any(data_dir.iterdir())


@pytest.mark.slow
def test_workdir_of_another_config_resumes_with_overwrite(tmp_path):
  workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
  check_or_save_config(workdir, _other_config(data_dir))
  completed = subprocess.run(_command(workdir, data_dir, "--config.overwrite=True"),
                             capture_output=True, text=True, cwd=REPO, timeout=600)
  assert completed.returncode == 0, completed.stderr[-2000:]
  assert "seed: 1 -> 0" in completed.stderr   # The warning still lists what changed.
  assert "method: 'joint' -> 'gradprom'" in completed.stderr
  assert (workdir / train.RESULTS_FILENAME).exists()
  assert len(list(workdir.glob("config.*.json"))) == 1   # The old config is kept for the record.


def test_unwritable_workdir_is_a_one_line_error_naming_the_path(main_runs):
  _, stderr, status, workdir = main_runs["unwritable"]
  assert status == 1, stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith(f"{MAIN}: error: WorkdirError: Directory {str(workdir)!r} is not writable")
  assert "Traceback" not in stderr and "Compiling" not in stderr


def test_unrestorable_checkpoints_stop_the_run_instead_of_starting_over(main_runs):
  _, stderr, status, workdir = main_runs["unrestorable"]
  assert status == 1, stderr[-2000:]
  assert (f"{MAIN}: error: CheckpointRestoreError: 1 checkpoint(s) in "
          f"{workdir / 'checkpoints'} exist but none could be restored") in stderr
  assert "Traceback" not in stderr
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  assert not (workdir / "metrics.jsonl").exists()


def test_missing_raw_files_say_where_to_put_them_and_leave_no_workdir(main_runs):
  _, stderr, status, workdir = main_runs["manual_download"]
  assert status == 1, stderr[-2000:]
  assert f"{MAIN}: error: ManualDownloadError: image_folder: manual_dir " in stderr
  assert "images/<id>.png" in stderr
  assert "Traceback" not in stderr
  assert not workdir.exists()


def test_full_disk_is_a_workdir_error_naming_the_path(tmp_path, monkeypatch):
  def full_disk(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", full_disk)   # Where a full disk shows up for a small write.
  with pytest.raises(WorkdirError, match=rf"{tmp_path / 'run'}.*No space left on device"):
    ensure_writable_directory(tmp_path / "run")


def test_help_lists_the_config_keys_with_their_comments_and_exits_0(main_runs):
  stdout, stderr, status, _ = main_runs["help"]
  assert status == 0, stderr[-2000:]
  assert "configs/ph2.py:classification,smoke" in stdout   # How config options combine.
  assert "  # Global batch size over all devices and hosts.\n  batch_size = 8\n" in stdout
  assert "  data.patch_size = [96, 128]" in stdout
  assert "# Low quality simulated on device from the high-quality batch" in stdout
  assert "--helpfull" in stdout


def test_help_with_a_config_shows_its_values(main_runs):
  stdout, stderr, status, _ = main_runs["help_of_a_config"]
  assert status == 0, stderr[-2000:]
  assert "with the values of configs/ph2.py:classification,smoke:" in stdout
  assert "  model.recognizer.name = 'resnet'" in stdout
  assert "  task.recognition = 'classification'" in stdout
  assert "  num_train_steps = 6" in stdout


def test_help_of_a_multitask_config_documents_each_task_and_its_recogniser(main_runs):
  stdout, stderr, status, _ = main_runs["help_of_a_multitask_config"]
  assert status == 0, stderr[-2000:]
  assert "  task.recognition = 'segmentation,classification'" in stdout
  assert "  model.recognizers.classification.name = 'resnet'" in stdout
  assert "  # λ_k = task_weight × weight" in stdout and "  task.classification.weight = 1.0" in stdout
  assert "task.segmentation.gradprom.threshold = None" in stdout
  assert "model.recognizer.name" not in stdout   # one recogniser per task, none shared
  assert "  data.patch_size = None" in stdout      # whole images: the diagnosis needs the lesion
