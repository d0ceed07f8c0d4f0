"""Official layouts: each builder parses a miniature tree written here in the released layout; a
missing manual download is one line naming `--config.data.manual_dir` and only this config's
archives (also through `experiments/main.py`), leaving no empty dataset folders."""
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from gradprom_jax.data import ManualDownloadError, default_data_config, load_dataset

from user_runs import error_line, main_command, run_all  # noqa: E402

PNEUMONIAMNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pneumoniamnist"
RNG = np.random.default_rng(0)


def image(path: Path, size=(20, 24), mode="RGB"):
  path.parent.mkdir(parents=True, exist_ok=True)
  shape = (*size, 3) if mode == "RGB" else size
  Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(path)


def mask(path: Path, size=(20, 24)):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray((RNG.random(size) > 0.5).astype(np.uint8) * 255).save(path)


def load(name, manual_dir, data_dir, **overrides):
  config = default_data_config()
  config.name, config.manual_dir, config.data_dir = name, str(manual_dir), str(data_dir)
  config.image_size = (16, 16)
  for key, value in overrides.items():
    config[key] = value
  return load_dataset(config)


def sizes(dataset):
  return {split: len(source) for split, source in dataset.sources.items()}


def test_ph2_release_layout(tmp_path):
  root = tmp_path / "PH2Dataset"
  rows = ["||   Name   | Histological Diagnosis | Clinical Diagnosis | Asymmetry ||"]
  for i in range(9):
    key = f"IMD{i:03d}"
    image(root / "PH2 Dataset images" / key / f"{key}_Dermoscopic_Image" / f"{key}.bmp")
    mask(root / "PH2 Dataset images" / key / f"{key}_lesion" / f"{key}_lesion.bmp")
    rows.append(f"|| {key}   |   {'Melanoma' if i % 3 == 2 else ''}   |   {i % 3}   |   0   ||")
  (root / "PH2_dataset.txt").write_text("\n".join(rows + ["", "Legend: 0 - Common Nevus"]))
  dataset = load("ph2", tmp_path, tmp_path / "tfds", split_fractions=(1 / 3, 1 / 3, 1 / 3))
  assert sizes(dataset) == {"train": 3, "validation": 3, "test": 3}
  assert dataset.class_names == ("common_nevus", "atypical_nevus", "melanoma") and dataset.has_mask
  labels = sorted(int(dataset.sources["test"][i]["label"]) for i in range(3))
  assert labels == [0, 1, 2]


def test_ph2_reads_the_tab_separated_copy():
  from gradprom_jax.data.ph2 import read_ph2_diagnoses
  shared = PNEUMONIAMNIST.parent / "ph2" / "original_PH2_dataset.txt"
  if not shared.exists():
    pytest.skip("shared PH2 copy not present")
  diagnoses = read_ph2_diagnoses(shared)
  assert len(diagnoses) == 200 and np.bincount(list(diagnoses.values())).tolist() == [80, 80, 40]


def test_isic_2018_task1_segmentation(tmp_path):
  for split, n in (("Training", 6), ("Validation", 2)):
    for i in range(n):
      key = f"ISIC_{split[0] == 'V'}{i:06d}"
      image(tmp_path / f"ISIC2018_Task1-2_{split}_Input" / f"{key}.jpg")
      mask(tmp_path / f"ISIC2018_Task1_{split}_GroundTruth" / f"{key}_segmentation.png")
  dataset = load("isic", tmp_path, tmp_path / "tfds", isic_task="2018_task1", split_fractions=(0.5, 0.25, 0.5))
  assert sizes(dataset) == {"train": 3, "validation": 2, "test": 3}  # No Test archive: carved from train.
  assert dataset.has_mask and not dataset.has_label


def test_isic_2018_task3_classification(tmp_path):
  classes = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
  folder = tmp_path / "ISIC2018_Task3_Training_Input"
  rows = ["image," + ",".join(classes)]
  for i in range(14):
    image(folder / f"ISIC_{i:07d}.jpg")
    rows.append(f"ISIC_{i:07d}," + ",".join("1.0" if c == i % 7 else "0.0" for c in range(7)))
  truth = tmp_path / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
  truth.parent.mkdir()
  truth.write_text("\n".join(rows))
  dataset = load("isic", tmp_path, tmp_path / "tfds", isic_task="2018_task3", split_fractions=(0.5, 0.25, 0.25))
  assert dataset.class_names == classes and not dataset.has_mask
  assert sum(sizes(dataset).values()) == 14 and sizes(dataset)["train"] == 7
  labels = [int(dataset.sources[s][i]["label"]) for s in sizes(dataset) for i in range(sizes(dataset)[s])]
  assert sorted(labels) == sorted(list(range(7)) * 2)


def test_isic_2017_task3_classification(tmp_path):
  rows = ["image_id,melanoma,seborrheic_keratosis"]
  for i in range(6):
    image(tmp_path / "ISIC-2017_Training_Data" / f"ISIC_{i:07d}.jpg")
    rows.append(f"ISIC_{i:07d},{float(i % 3 == 0)},{float(i % 3 == 1)}")
  (tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("\n".join(rows))
  dataset = load("isic", tmp_path, tmp_path / "tfds", isic_task="2017_task3", split_fractions=(0.5, 0.25, 0.25))
  assert dataset.class_names == ("melanoma", "seborrheic_keratosis", "nevus") and sizes(dataset)["train"] == 3


def isic_2018_task1_task3(root: Path, task1_ids, labelled_ids):
  """Task 1 images and masks for ``task1_ids``; a Task 3 CSV labelling ``labelled_ids`` (class
  MEL when the id is even, NV when odd); no Task 3 images (the multi-task layout never reads them)."""
  for i in task1_ids:
    image(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg")
    mask(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png")
  rows = ["image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"]
  rows += [f"ISIC_{i:07d},{float(i % 2 == 0)},{float(i % 2 == 1)},0,0,0,0,0" for i in labelled_ids]
  truth = root / "ISIC2018_Task3_Training_GroundTruth" / "ISIC2018_Task3_Training_GroundTruth.csv"
  truth.parent.mkdir(parents=True)
  truth.write_text("\n".join(rows))


def test_isic_2018_multitask_keeps_the_images_with_a_mask_and_a_label(tmp_path):
  isic_2018_task1_task3(tmp_path, task1_ids=range(0, 12), labelled_ids=range(4, 30))
  dataset = load("isic", tmp_path, tmp_path / "tfds", isic_task="2018_task1_task3",
                 split_fractions=(0.5, 0.25, 0.25))
  assert dataset.has_mask and dataset.has_label and dataset.class_names[:2] == ("MEL", "NV")
  assert sum(sizes(dataset).values()) == 8   # ids 4..11: Task 1 images that Task 3 labels
  examples = [dataset.sources[s][i] for s in sizes(dataset) for i in range(sizes(dataset)[s])]
  assert sorted(int(e["label"]) for e in examples) == [0] * 4 + [1] * 4
  assert all(e["mask"].shape == (16, 16, 1) for e in examples)


def test_isic_2018_multitask_without_shared_images_says_so(tmp_path):
  isic_2018_task1_task3(tmp_path, task1_ids=range(0, 4), labelled_ids=range(10, 14))
  with pytest.raises(ManualDownloadError, match="needs images with both a Task 1 mask and a Task 3 label"):
    load("isic", tmp_path, tmp_path / "tfds", isic_task="2018_task1_task3")


def test_isic_2017_multitask_labels_every_image(tmp_path):
  rows = ["image_id,melanoma,seborrheic_keratosis"]
  for i in range(6):
    image(tmp_path / "ISIC-2017_Training_Data" / f"ISIC_{i:07d}.jpg")
    mask(tmp_path / "ISIC-2017_Training_Part1_GroundTruth" / f"ISIC_{i:07d}_segmentation.png")
    rows.append(f"ISIC_{i:07d},{float(i % 3 == 0)},{float(i % 3 == 1)}")
  (tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv").write_text("\n".join(rows))
  dataset = load("isic", tmp_path, tmp_path / "tfds", isic_task="2017_task1_task3",
                 split_fractions=(0.5, 0.25, 0.25))
  assert dataset.has_mask and dataset.class_names == ("melanoma", "seborrheic_keratosis", "nevus")
  assert sum(sizes(dataset).values()) == 6


def test_isic_missing_archive_says_which_files_go_where(tmp_path):
  with pytest.raises(ManualDownloadError, match="ISIC2018_Task1_Training_GroundTruth/ISIC_xxxxxxx_segmentation"):
    load("isic", tmp_path, tmp_path / "tfds", isic_task="2018_task1")


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


MISSING_DOWNLOADS = {  # name -> (config, extra flags)
    "isic_no_download": ("configs/isic.py:smoke", []),
    "isic_task3_no_download": ("configs/isic.py:task3,smoke", []),
    "kvasir_empty_download": ("configs/kvasir.py:smoke", ["--config.data.manual_dir={empty}"]),
}


@pytest.fixture(scope="module")
def missing_download_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("missing_downloads")
  (root / "empty").mkdir()
  return run_all(root, {name: main_command(root, name, *spec)
                        for name, spec in MISSING_DOWNLOADS.items()})


@pytest.mark.parametrize("name, needed, not_needed", [
    ("isic_no_download", ["ISIC2018_Task1-2_Training_Input.zip", "ISIC2018_Task1_Training_GroundTruth.zip"],
     ["Task3", "2017"]),
    ("isic_task3_no_download", ["ISIC2018_Task3_Training_Input.zip", "ISIC2018_Task3_Training_GroundTruth.zip"],
     ["Task1", "2017"]),
    ("kvasir_empty_download", ["kvasir-seg.zip", "Kvasir-SEG/images/<id>.jpg"], ["ISIC"]),
])
def test_cli_missing_download_is_one_line_and_leaves_no_dataset_folders(missing_download_runs, name,
                                                                        needed, not_needed):
  output, status, workdir, data_dir = missing_download_runs[name]
  line = error_line(output)
  assert status == 1 and not workdir.exists()
  assert "ManualDownloadError:" in line and "--config.data.manual_dir=" in line
  assert all(archive in line for archive in needed) and not any(other in line for other in not_needed)
  assert not data_dir.exists() or [p for p in data_dir.rglob("*") if p.is_dir()] == []


def test_kvasir_seg_layout(tmp_path):
  for i in range(8):
    image(tmp_path / "Kvasir-SEG" / "images" / f"cju{i}.jpg")
    mask(tmp_path / "Kvasir-SEG" / "masks" / f"cju{i}.jpg")
  dataset = load("kvasir_seg", tmp_path, tmp_path / "tfds", split_fractions=(0.5, 0.25, 0.25))
  assert sizes(dataset) == {"train": 4, "validation": 2, "test": 2} and dataset.has_mask
  assert set(np.unique(dataset.sources["train"][0]["mask"])) == {0, 1}  # JPEG noise thresholded away.


def test_chest_xray_layout_is_grayscale_with_its_own_splits(tmp_path):
  for folder, n in (("train", 3), ("val", 1), ("test", 2)):
    for label in ("NORMAL", "PNEUMONIA"):
      for i in range(n):
        image(tmp_path / "chest_xray" / folder / label / f"person{i}_{label}.jpeg", mode="L")
  dataset = load("chest_xray", tmp_path, tmp_path / "tfds")
  assert sizes(dataset) == {"train": 6, "validation": 2, "test": 4}
  assert dataset.image_shape == (16, 16, 1) and dataset.class_names == ("NORMAL", "PNEUMONIA")


def test_medmnist_miniature_npz(tmp_path):
  arrays = {f"{s}_images": RNG.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8) for s, n in
            (("train", 5), ("val", 2), ("test", 3))}
  arrays.update({f"{s}_labels": np.arange(len(arrays[f"{s}_images"]))[:, None] % 7 for s in ("train", "val", "test")})
  np.savez(tmp_path / "dermamnist.npz", **arrays)
  dataset = load("medmnist", tmp_path, tmp_path / "tfds", medmnist_file="dermamnist.npz", image_size=None)
  assert sizes(dataset) == {"train": 5, "validation": 2, "test": 3}
  assert dataset.image_shape == (28, 28, 3) and dataset.num_classes == 7


@pytest.mark.skipif(not (PNEUMONIAMNIST / "pneumoniamnist_28.npz").exists(), reason="PneumoniaMNIST not present")
def test_medmnist_loads_the_shared_pneumoniamnist(tmp_path):
  dataset = load("medmnist", PNEUMONIAMNIST, tmp_path, medmnist_file="pneumoniamnist_28.npz", image_size=None)
  assert sizes(dataset) == {"train": 4708, "validation": 524, "test": 624}
  assert dataset.image_shape == (28, 28, 1) and dataset.class_names == ("normal", "pneumonia")
  with np.load(PNEUMONIAMNIST / "pneumoniamnist_28.npz") as npz:
    labels = sorted(int(dataset.sources["test"][i]["label"]) for i in range(624))
    assert labels == sorted(npz["test_labels"].reshape(-1).tolist())
