"""`isic`: ISIC challenge dermoscopy sets in their released layouts (2018 and 2017, Task 1 and Task 3).

`data.isic_task` picks one:
- `2018_task1`: lesion segmentation (masks, no label); Training/Validation/Test folders as released.
- `2018_task3`: 7-class diagnosis from the one-hot ground-truth CSV (MEL, NV, BCC, AKIEC, BKL, DF, VASC).
- `2017_task1`: lesion segmentation; `2017_task3`: melanoma / seborrheic keratosis / nevus.
- `2018_task1_task3`, `2017_task1_task3`: both, for a multi-task run: each Task 1 image with its
  mask and its Task 3 label, for the images that have both (the others are left out and counted).
  ISIC 2017 labels one image set in Parts 1 and 3, so every image has both. ISIC 2018 drew Task 1
  and Task 3 (HAM10000) from different parts of the archive, so they may share few images (not
  checked here: no ISIC data on this machine); the build logs how many it kept per split and
  refuses a split where none has both.
ISIC 2016 is not supported: its archive naming could not be confirmed here.
A split the archives lack (e.g. only Training downloaded) is carved from train by the data config's split.
"""
import csv
import logging
from pathlib import Path

from gradprom_jax.data import examples
from gradprom_jax.data import records_builder

TASK3_2018_CLASSES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
TASK3_2017_CLASSES = ("melanoma", "seborrheic_keratosis", "nevus")
# Released folder prefixes per split: {task: {split: (input folder, ground truth)}}.
LAYOUTS = {
    "2018_task1": {s: (f"ISIC2018_Task1-2_{d}_Input", f"ISIC2018_Task1_{d}_GroundTruth")
                   for s, d in (("train", "Training"), ("validation", "Validation"), ("test", "Test"))},
    "2018_task3": {s: (f"ISIC2018_Task3_{d}_Input", f"ISIC2018_Task3_{d}_GroundTruth/ISIC2018_Task3_{d}_GroundTruth.csv")
                   for s, d in (("train", "Training"), ("validation", "Validation"), ("test", "Test"))},
    "2017_task1": {s: (f"ISIC-2017_{d}_Data", f"ISIC-2017_{d}_Part1_GroundTruth")
                   for s, d in (("train", "Training"), ("validation", "Validation"), ("test", "Test_v2"))},
    "2017_task3": {s: (f"ISIC-2017_{d}_Data", f"ISIC-2017_{d}_Part3_GroundTruth.csv")
                   for s, d in (("train", "Training"), ("validation", "Validation"), ("test", "Test_v2"))},
}
# Multi-task layouts: (the task whose images and masks are used, the task whose labels are used).
COMBINED = {"2018_task1_task3": ("2018_task1", "2018_task3"),
            "2017_task1_task3": ("2017_task1", "2017_task3")}


def read_one_hot_csv(path: Path, class_names) -> dict[str, str]:
  """{image id: class name} from a one-hot ground-truth CSV (ISIC 2018 Task 3: image,MEL,NV,...)."""
  labels = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      hot = [name for name in class_names if float(row.get(name) or 0) > 0.5]
      if len(hot) != 1:
        raise examples.BadInputError(f"{path}: row {row.get('image')} has {len(hot)} positive classes, not 1")
      labels[row["image"]] = hot[0]
  return labels


def read_2017_csv(path: Path) -> dict[str, str]:
  """{image_id: class} from ISIC 2017 Part 3 (columns image_id, melanoma, seborrheic_keratosis)."""
  labels = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      if float(row["melanoma"]) > 0.5:
        labels[row["image_id"]] = "melanoma"
      elif float(row["seborrheic_keratosis"]) > 0.5:
        labels[row["image_id"]] = "seborrheic_keratosis"
      else:
        labels[row["image_id"]] = "nevus"
  return labels


class Isic(records_builder.FilesBuilder):
  """ISIC 2017/2018 challenge dermoscopy: lesion segmentation (Task 1) or diagnosis (Task 3)."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the archives of your task from https://challenge.isic-archive.com/data/ and extract each
  into manual_dir (folder names as released; Validation and Test are optional):
    2018_task1: ISIC2018_Task1-2_Training_Input/ISIC_xxxxxxx.jpg
                ISIC2018_Task1_Training_GroundTruth/ISIC_xxxxxxx_segmentation.png   (+ Validation, Test)
    2018_task3: ISIC2018_Task3_Training_Input/ISIC_xxxxxxx.jpg
                ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv (+ Validation, Test)
    2017_task1: ISIC-2017_Training_Data/ISIC_xxxxxxx.jpg
                ISIC-2017_Training_Part1_GroundTruth/ISIC_xxxxxxx_segmentation.png  (+ Validation, Test_v2)
    2017_task3: ISIC-2017_Training_Data/ISIC_xxxxxxx.jpg
                ISIC-2017_Training_Part3_GroundTruth.csv                           (+ Validation, Test_v2)
    2018_task1_task3, 2017_task1_task3: the archives of both tasks (images and masks of Task 1,
                labels of Task 3)
  """

  @property
  def task(self) -> str:
    task = self.builder_config.option("isic_task", "2018_task1")
    check_task(task)
    return task

  def has_mask(self) -> bool:
    return "task1" in self.task

  def manual_download_instructions(self) -> str:
    """Only the archives of `data.isic_task` (Training; Validation and Test are optional)."""
    if self.task in COMBINED:
      masks_task, labels_task = COMBINED[self.task]
      (inputs, masks), (_, labels) = LAYOUTS[masks_task]["train"], LAYOUTS[labels_task]["train"]
      labels_top = labels.split("/")[0]
      archives = [f"{inputs}.zip", f"{masks}.zip",
                  labels_top if labels_top.endswith(".csv") else f"{labels_top}.zip"]
      return (f"{', '.join(archives)} ({self.task}, from https://challenge.isic-archive.com/data/) "
              f"extracted: {inputs}/ISIC_xxxxxxx.jpg, {masks}/ISIC_xxxxxxx_segmentation.png and "
              f"{labels}\nthe Validation and Test archives of the same tasks are optional")
    inputs, truth = LAYOUTS[self.task]["train"]
    truth_top = truth.split("/")[0]
    archives = [f"{inputs}.zip", truth_top if truth_top.endswith(".csv") else f"{truth_top}.zip"]
    example = f"{truth}/ISIC_xxxxxxx_segmentation.png" if self.has_mask() else truth
    return (f"{' and '.join(archives)} ({self.task}, from https://challenge.isic-archive.com/data/) "
            f"extracted: {inputs}/ISIC_xxxxxxx.jpg and {example}\n"
            f"the Validation and Test archives of the same task are optional")

  def class_names(self):
    labels_task = COMBINED[self.task][1] if self.task in COMBINED else self.task
    return {"2018_task3": TASK3_2018_CLASSES, "2017_task3": TASK3_2017_CLASSES}.get(labels_task)

  def _read_labels(self, task: str, path: Path) -> dict[str, str]:
    return (read_one_hot_csv(path, TASK3_2018_CLASSES) if task == "2018_task3"
            else read_2017_csv(path))

  def list_combined_records(self, root: Path) -> dict[str, list[examples.Record]]:
    """Task 1's images and masks with Task 3's labels, for the images that have both."""
    masks_task, labels_task = COMBINED[self.task]
    splits = {}
    for split, (inputs, masks) in LAYOUTS[masks_task].items():
      labels_path = LAYOUTS[labels_task][split][1]
      if split != "train" and not ((root / inputs).is_dir() and (root / labels_path).exists()):
        continue
      images = sorted(p for p in self.require(root / inputs).glob("ISIC_*.jpg"))
      masks = self.require(root / masks)
      labels = self._read_labels(labels_task, self.require(root / labels_path))
      kept = [p for p in images if p.stem in labels]
      logging.info("isic %s %s: %d of %d Task 1 images have a Task 3 label (%d labels)",
                   self.task, split, len(kept), len(images), len(labels))
      if not kept:
        raise self.manual_download_error(
            f"no image of {root / inputs} has a label in {root / labels_path} (split {split}): "
            f"{self.task} needs images with both a Task 1 mask and a Task 3 label")
      splits[split] = [examples.Record(key=p.stem, image=p, mask=masks / f"{p.stem}_segmentation.png",
                                       label=labels[p.stem]) for p in kept]
    return splits

  def list_records(self, root: Path) -> dict[str, list[examples.Record]]:
    if self.task in COMBINED:
      return self.list_combined_records(root)
    splits = {}
    for split, (inputs, truth) in LAYOUTS[self.task].items():
      if split != "train" and not (root / inputs).is_dir():
        continue
      images = sorted(p for p in self.require(root / inputs).glob("ISIC_*.jpg"))
      truth = self.require(root / truth)
      if self.has_mask():
        splits[split] = [examples.Record(key=p.stem, image=p, mask=truth / f"{p.stem}_segmentation.png")
                         for p in images]
        continue
      labels = self._read_labels(self.task, truth)
      for missing in sorted(set(labels) - {p.stem for p in images}):
        self.bad_inputs.add(examples.BadInputError(f"{truth}: id {missing!r} has no image in {root / inputs}"))
      splits[split] = [examples.Record(key=p.stem, image=p, label=labels.get(p.stem)) for p in images]
    return splits


def check_task(task: str) -> None:
  """Raises ValueError unless `task` names a layout (one task, or two for a multi-task run).

  >>> check_task("2019_task1")
  Traceback (most recent call last):
  ...
  ValueError: unknown data.isic_task '2019_task1'; valid: ['2017_task1', '2017_task1_task3', '2017_task3', '2018_task1', '2018_task1_task3', '2018_task3']
  """
  if task not in LAYOUTS and task not in COMBINED:
    raise ValueError(f"unknown data.isic_task {task!r}; valid: {sorted([*LAYOUTS, *COMBINED])}")


def add_config_keys(config) -> None:
  """ISIC's key under ``config.data``."""
  # isic: which challenge task: 2018_task1 (segmentation), 2018_task3 (7 classes), 2017_task1, 2017_task3;
  # 2018_task1_task3 / 2017_task1_task3: Task 1 masks and Task 3 labels together (multi-task runs).
  config.isic_task = "2018_task1"


DATASET = records_builder.files_dataset("isic", Isic, add_config_keys=add_config_keys,
                                        check_config=lambda config: check_task(config.isic_task))
