"""`isic`: ISIC challenge dermoscopy sets in their released layouts (2018 and 2017, Task 1 and Task 3).

`data.isic_task` picks one:
- `2018_task1`: lesion segmentation (masks, no label); Training/Validation/Test folders as released.
- `2018_task3`: 7-class diagnosis from the one-hot ground-truth CSV (MEL, NV, BCC, AKIEC, BKL, DF, VASC).
- `2017_task1`: lesion segmentation; `2017_task3`: melanoma / seborrheic keratosis / nevus.
ISIC 2016 is not supported: its archive naming could not be confirmed here.
A split the archives lack (e.g. only Training downloaded) is carved from train by the data config's split.
"""
import csv
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
  """

  @property
  def task(self) -> str:
    task = self.builder_config.option("isic_task", "2018_task1")
    if task not in LAYOUTS:
      raise ValueError(f"unknown data.isic_task {task!r}; valid: {sorted(LAYOUTS)}")
    return task

  def has_mask(self) -> bool:
    return self.task.endswith("task1")

  def manual_download_instructions(self) -> str:
    """Only the archives of `data.isic_task` (Training; Validation and Test are optional)."""
    inputs, truth = LAYOUTS[self.task]["train"]
    truth_top = truth.split("/")[0]
    archives = [f"{inputs}.zip", truth_top if truth_top.endswith(".csv") else f"{truth_top}.zip"]
    example = f"{truth}/ISIC_xxxxxxx_segmentation.png" if self.has_mask() else truth
    return (f"{' and '.join(archives)} ({self.task}, from https://challenge.isic-archive.com/data/) "
            f"extracted: {inputs}/ISIC_xxxxxxx.jpg and {example}\n"
            f"the Validation and Test archives of the same task are optional")

  def class_names(self):
    return {"2018_task3": TASK3_2018_CLASSES, "2017_task3": TASK3_2017_CLASSES}.get(self.task)

  def list_records(self, root: Path) -> dict[str, list[examples.Record]]:
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
      labels = (read_one_hot_csv(truth, TASK3_2018_CLASSES) if self.task == "2018_task3"
                else read_2017_csv(truth))
      for missing in sorted(set(labels) - {p.stem for p in images}):
        self.bad_inputs.add(examples.BadInputError(f"{truth}: id {missing!r} has no image in {root / inputs}"))
      splits[split] = [examples.Record(key=p.stem, image=p, label=labels.get(p.stem)) for p in images]
    return splits
