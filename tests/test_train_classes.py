"""The recogniser's classes and class weights as training builds them (`gradprom_jax.training.train`:
`recognizer_class_names`, `build_system`), on a user's own folder: a segmentation run's classes are
the mask classes; `task.class_weights="balanced"` weights the loss by the inverse training-split
frequencies; weights that do not fit the task or the classes are refused (through
`experiments/main.py`: exit status 2, one line), and a finished run's model_info.json names its
classes.
"""
import json

import numpy as np
import pytest

from configs import image_folder as image_folder_config
from gradprom_jax.configuration.config_validation import ConfigError, parse_tasks, validate_config
from gradprom_jax.data import default_data_config, load_dataset
from gradprom_jax.training.experiment import parse_experiment
from gradprom_jax.training.train import build_system, recognizer_class_names

from user_runs import error_line, main_command, run_all, write_user_folder  # noqa: E402


def folder_data_config(manual_dir, data_dir, **overrides):
  config = default_data_config()
  config.name, config.manual_dir, config.data_dir = "image_folder", str(manual_dir), str(data_dir)
  config.image_size = (16, 16)
  for key, value in overrides.items():
    config[key] = value
  return config


def test_segmentation_recognizer_classes_are_the_mask_classes(tmp_path):
  root = write_user_folder(tmp_path / "raw")
  dataset = load_dataset(folder_data_config(root, tmp_path / "tfds", label_column="grade"))
  config = image_folder_config.get_config("smoke")
  assert recognizer_class_names(parse_tasks(config), dataset) == {
      "segmentation": ("background", "lesion")}
  assert build_system(config, dataset).num_classes == {"segmentation": 2}
  config = image_folder_config.get_config("classification,smoke")
  assert recognizer_class_names(parse_tasks(config), dataset) == {
      "classification": ("benign", "malignant")}


def test_balanced_class_weights_are_inverse_train_frequencies_with_mean_one(tmp_path):
  root = write_user_folder(tmp_path / "raw")
  dataset = load_dataset(folder_data_config(root, tmp_path / "tfds", label_column="grade"))
  config = image_folder_config.get_config("classification,smoke")
  config.task.class_weights = "balanced"
  weights = np.asarray(build_system(config, dataset).heads[0].class_weights)
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
    parse_experiment(config).check_dataset((64, 64, 3), ("benign", "malignant"))
  else:
    with pytest.raises(ConfigError, match=error):
      validate_config(config)


def test_class_weights_of_the_wrong_length_or_balanced_segmentation_are_refused():
  config = image_folder_config.get_config("classification,smoke")
  config.task.class_weights = (1.0, 2.0, 3.0)
  with pytest.raises(ConfigError, match="has 3 weights but the recogniser has 2 classes: benign, malignant"):
    parse_experiment(config).check_dataset((64, 64, 3), ("benign", "malignant"))
  config = image_folder_config.get_config("smoke")
  config.task.class_weights = "balanced"
  with pytest.raises(ConfigError, match="classification only"):
    validate_config(config)


# ---- The user's commands.

FOLDER_FLAGS = ["--config.data.manual_dir={raw}", "--config.data.label_column=grade"]


def test_cli_class_weights_of_the_wrong_length_are_exit_2(tmp_path):
  write_user_folder(tmp_path / "raw")
  output, status, workdir, _ = run_all(tmp_path, {"wrong_length": main_command(
      tmp_path, "wrong_length", "configs/image_folder.py:classification,smoke",
      [*FOLDER_FLAGS, "--config.task.class_weights=(1.0, 2.0, 3.0)"])})["wrong_length"]
  line = error_line(output)
  assert status == 2 and not workdir.exists()
  assert "task.class_weights=(1.0, 2.0, 3.0) has 3 weights but the recogniser has 2 classes" in line


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("finished_runs")
  write_user_folder(root / "raw")
  return run_all(root, {
      "balanced": main_command(root, "balanced", "configs/image_folder.py:classification,smoke",
                               [*FOLDER_FLAGS, "--config.task.class_weights=balanced"]),
      "segmentation": main_command(root, "segmentation", "configs/image_folder.py:smoke",
                                   FOLDER_FLAGS),
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
