"""What a new user hit on their own data, driven as they drove it: `experiments/main.py` with `:smoke`
configs, a tmp workdir and a tmp `--config.data.data_dir`, plus focused unit tests.

Blank labels in labels.csv stop the build naming their rows (or are skipped and counted); the classes
and their counts per split are printed before training; a missing manual download is one line naming
`--config.data.manual_dir` and only this config's archives, leaving no empty dataset folders; a
segmentation run's model_info.json names the mask classes; `task.class_weights="balanced"` weights
the loss by the inverse training-split frequencies; a collapsed classifier is warned about.
"""
import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import image_folder as image_folder_config
from gradprom_jax.configuration.config_validation import (ConfigError, validate_config,
                                                          validate_config_for_dataset)
from gradprom_jax.core import losses, metrics
from gradprom_jax.data import BadInputError, ManualDownloadError, default_data_config, load_dataset
from gradprom_jax.training import evaluation
from gradprom_jax.training.train import build_system, recognizer_class_names

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "experiments" / "main.py"


def write_user_folder(root: Path, n=25, minority=7) -> Path:
  """The user's folder: the labels are in `grade` (benign 18 / malignant 7); `diagnosis` holds
  free text with every fifth cell blank."""
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / f"img{i}.png")
    Image.fromarray((rng.random((24, 32)) > 0.5).astype(np.uint8) * 255).save(
        root / "masks" / f"img{i}_lesion.png")
    rows.append({"image_id": f"img{i}", "diagnosis": "" if i % 5 == 2 else "see notes",
                 "grade": "malignant" if i < minority else "benign"})
  with open(root / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["image_id", "diagnosis", "grade"])
    writer.writeheader()
    writer.writerows(rows)
  return root


def folder_data_config(manual_dir, data_dir, **overrides):
  config = default_data_config()
  config.name, config.manual_dir, config.data_dir = "image_folder", str(manual_dir), str(data_dir)
  config.image_size = (16, 16)
  for key, value in overrides.items():
    config[key] = value
  return config


# ---- Focused unit tests.

def test_blank_labels_are_an_error_naming_the_rows(tmp_path):
  root = write_user_folder(tmp_path / "raw")
  with pytest.raises(BadInputError, match=r"5 rows with a blank 'image_id' or 'diagnosis' \(line 4: id "
                                          r"'img2', line 9: id 'img7'.*columns are image_id, diagnosis, grade"):
    load_dataset(folder_data_config(root, tmp_path / "tfds"))
  assert [p.name for p in (tmp_path / "tfds").rglob("*") if not p.name.endswith(".build.lock")] == []


def test_blank_labels_are_skipped_and_counted_with_skip_bad(tmp_path):
  root = write_user_folder(tmp_path / "raw")
  dataset = load_dataset(folder_data_config(root, tmp_path / "tfds", skip_bad=True))
  assert dataset.class_names == ("see notes",)  # No class named "".
  assert len(dataset.skipped) == 5 and all("blank 'diagnosis'" in m for m in dataset.skipped)
  assert sum(len(s) for s in dataset.sources.values()) == 20


def test_class_counts_per_split_are_logged(tmp_path, caplog):
  root = write_user_folder(tmp_path / "raw")
  with caplog.at_level(logging.INFO):
    dataset = load_dataset(folder_data_config(root, tmp_path / "tfds", label_column="grade"))
  assert dataset.class_names == ("benign", "malignant")
  assert {split: sum(c) for split, c in dataset.class_counts.items()} == {
      split: len(source) for split, source in dataset.sources.items()}
  assert [sum(c[k] for c in dataset.class_counts.values()) for k in range(2)] == [18, 7]
  line = next(r.getMessage() for r in caplog.records if "classes, examples per split" in r.getMessage())
  train, validation, test = (dataset.class_counts[s] for s in ("train", "validation", "test"))
  assert (f"'malignant' train {train[1]} / validation {validation[1]} / test {test[1]}") in line


def test_missing_manual_dir_is_one_line_naming_the_flag_and_leaves_no_folders(tmp_path):
  config = default_data_config()
  config.name, config.data_dir, config.isic_task = "isic", str(tmp_path / "tfds"), "2018_task3"
  with pytest.raises(ManualDownloadError) as error:
    load_dataset(config)
  message = str(error.value)
  assert "\n" not in message and "--config.data.manual_dir=" in message
  assert "ISIC2018_Task3_Training_Input.zip" in message
  assert "Task1" not in message and "2017" not in message
  assert [p for p in (tmp_path / "tfds").rglob("*") if p.is_dir()] == []


def test_segmentation_recognizer_classes_are_the_mask_classes(tmp_path):
  root = write_user_folder(tmp_path / "raw")
  dataset = load_dataset(folder_data_config(root, tmp_path / "tfds", label_column="grade"))
  config = image_folder_config.get_config("smoke")
  assert recognizer_class_names(config, dataset) == ("background", "lesion")
  assert build_system(config, dataset).num_classes == 2
  config = image_folder_config.get_config("classification,smoke")
  assert recognizer_class_names(config, dataset) == ("benign", "malignant")


def test_balanced_class_weights_are_inverse_train_frequencies_with_mean_one(tmp_path):
  assert losses.balanced_class_weights([72, 28]) == pytest.approx((0.56, 1.44))
  with pytest.raises(ValueError, match="none of class"):
    losses.balanced_class_weights([5, 0])
  root = write_user_folder(tmp_path / "raw")
  dataset = load_dataset(folder_data_config(root, tmp_path / "tfds", label_column="grade"))
  config = image_folder_config.get_config("classification,smoke")
  config.task.class_weights = "balanced"
  weights = np.asarray(build_system(config, dataset).head.class_weights)
  counts = np.asarray(dataset.class_counts["train"])
  assert weights.mean() == pytest.approx(1.0) and weights[1] > weights[0]
  np.testing.assert_allclose(weights * counts, (weights * counts)[0], rtol=1e-5)  # Equal class totals.


@pytest.mark.parametrize("weights, error", [
    (None, None), ("balanced", None), ((1.0, 3.0), None),
    ("balancd", "must be None, 'balanced' or a tuple"), ((1.0, -1.0), "non-negative"),
    ((0.0, 0.0), "not all 0"),
])
def test_class_weights_validation(weights, error):
  config = image_folder_config.get_config("classification,smoke")
  config.task.class_weights = weights
  if error is None:
    validate_config(config)
    validate_config_for_dataset(config, (64, 64, 3), ("benign", "malignant"))
  else:
    with pytest.raises(ConfigError, match=error):
      validate_config(config)


def test_class_weights_of_the_wrong_length_or_balanced_segmentation_are_refused():
  config = image_folder_config.get_config("classification,smoke")
  config.task.class_weights = (1.0, 2.0, 3.0)
  with pytest.raises(ConfigError, match="has 3 weights but the recogniser has 2 classes: benign, malignant"):
    validate_config_for_dataset(config, (64, 64, 3), ("benign", "malignant"))
  config = image_folder_config.get_config("smoke")
  config.task.class_weights = "balanced"
  with pytest.raises(ConfigError, match="classification only"):
    validate_config(config)


def test_single_class_predictions_are_warned_about(caplog):
  collapsed = metrics.ClassificationMetrics(num_classes=2).update(
      np.tile([[0.7, 0.3]], (5, 1)), np.array([0, 0, 0, 1, 1]))
  varied = metrics.ClassificationMetrics(num_classes=2).update(
      np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([0, 1]))
  with caplog.at_level(logging.WARNING):
    assert evaluation.warn_if_single_class_predicted(collapsed)
    assert not evaluation.warn_if_single_class_predicted(varied)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "predicts class 0 for all 5 examples" in warnings[0]
  assert "class_weights=balanced" in warnings[0]


# ---- The user's commands.

FAILING = {  # name -> (config, extra flags)
    "blank_labels": ("configs/image_folder.py:classification,smoke", ["--config.data.manual_dir={raw}"]),
    "isic_no_download": ("configs/isic.py:smoke", []),
    "isic_task3_no_download": ("configs/isic.py:task3,smoke", []),
    "kvasir_empty_download": ("configs/kvasir.py:smoke", ["--config.data.manual_dir={empty}"]),
    "weights_of_wrong_length": ("configs/image_folder.py:classification,smoke",
                                ["--config.data.manual_dir={raw}", "--config.data.label_column=grade",
                                 "--config.task.class_weights=(1.0, 2.0, 3.0)"]),
}


def _command(root, name, config, extra):
  paths = {"raw": root / "raw", "empty": root / "empty"}
  return [sys.executable, str(MAIN), f"--config={config}", f"--workdir={root / name}",
          f"--config.data.data_dir={root / name}_tfds", *(flag.format(**paths) for flag in extra)]


def _run_all(root, commands):
  processes = {name: subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for name, command in commands.items()}
  outputs = {}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=600)
    outputs[name] = (stdout + stderr, process.returncode, root / name, root / f"{name}_tfds")
  return outputs


@pytest.fixture(scope="module")
def failing_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("newcomer")
  write_user_folder(root / "raw")
  (root / "empty").mkdir()
  return _run_all(root, {name: _command(root, name, *spec) for name, spec in FAILING.items()})


def _error_line(output: str) -> str:
  errors = [line for line in output.splitlines() if ": error: " in line]
  assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
  return errors[0]


def test_cli_blank_labels_name_the_rows_and_the_columns(failing_runs):
  output, status, workdir, _ = failing_runs["blank_labels"]
  line = _error_line(output)
  assert status == 1 and not workdir.exists()
  assert "BadInputError:" in line and "5 rows with a blank 'image_id' or 'diagnosis'" in line
  assert "line 4: id 'img2'" in line and "columns are image_id, diagnosis, grade" in line


@pytest.mark.parametrize("name, needed, not_needed", [
    ("isic_no_download", ["ISIC2018_Task1-2_Training_Input.zip", "ISIC2018_Task1_Training_GroundTruth.zip"],
     ["Task3", "2017"]),
    ("isic_task3_no_download", ["ISIC2018_Task3_Training_Input.zip", "ISIC2018_Task3_Training_GroundTruth.zip"],
     ["Task1", "2017"]),
    ("kvasir_empty_download", ["kvasir-seg.zip", "Kvasir-SEG/images/<id>.jpg"], ["ISIC"]),
])
def test_cli_missing_download_is_one_line_and_leaves_no_dataset_folders(failing_runs, name, needed, not_needed):
  output, status, workdir, data_dir = failing_runs[name]
  line = _error_line(output)
  assert status == 1 and not workdir.exists()
  assert "ManualDownloadError:" in line and "--config.data.manual_dir=" in line
  assert all(archive in line for archive in needed) and not any(other in line for other in not_needed)
  assert not data_dir.exists() or [p for p in data_dir.rglob("*") if p.is_dir()] == []


def test_cli_class_weights_of_the_wrong_length_are_exit_2(failing_runs):
  output, status, workdir, _ = failing_runs["weights_of_wrong_length"]
  line = _error_line(output)
  assert status == 2 and not workdir.exists()
  assert "task.class_weights=(1.0, 2.0, 3.0) has 3 weights but the recogniser has 2 classes" in line


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("newcomer_runs")
  write_user_folder(root / "raw")
  fixed = ["--config.data.manual_dir={raw}", "--config.data.label_column=grade"]
  return _run_all(root, {
      "balanced": _command(root, "balanced", "configs/image_folder.py:classification,smoke",
                           [*fixed, "--config.task.class_weights=balanced"]),
      "segmentation": _command(root, "segmentation", "configs/image_folder.py:smoke", fixed),
  })


@pytest.mark.slow
def test_cli_balanced_classification_prints_classes_and_weights(finished_runs):
  output, status, workdir, _ = finished_runs["balanced"]
  assert status == 0, output[-3000:]
  assert "image_folder classes, examples per split: 'benign' train " in output
  assert "Class weights (balanced): benign 0.588, malignant 1.41" in output  # Train: 12 / 5.
  info = json.loads((workdir / "model_info.json").read_text())
  assert info["class_names"] == ["benign", "malignant"] and info["num_classes"] == 2


@pytest.mark.slow
def test_cli_segmentation_model_info_names_the_mask_classes(finished_runs):
  output, status, workdir, _ = finished_runs["segmentation"]
  assert status == 0, output[-3000:]
  info = json.loads((workdir / "model_info.json").read_text())
  assert info["recognition"] == "segmentation"
  assert info["class_names"] == ["background", "lesion"] and info["num_classes"] == 2
