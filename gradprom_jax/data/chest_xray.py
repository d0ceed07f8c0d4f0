"""`chest_xray`: pediatric chest X-rays, normal vs pneumonia (Kermany et al. 2018), grayscale."""
from pathlib import Path

from gradprom_jax.data import examples
from gradprom_jax.data import records_builder

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
SOURCE_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class ChestXray(records_builder.FilesBuilder):
  """Chest X-Ray Pneumonia (Kermany): train/val/test folders of NORMAL and PNEUMONIA jpegs."""

  NUM_CHANNELS = 1
  CLASS_NAMES = CLASS_NAMES
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download "Chest X-Ray Images (Pneumonia)" (Kermany et al., Mendeley data rscbjbr9sj v2, or the Kaggle
  copy paultimothymooney/chest-xray-pneumonia) and extract it into manual_dir:
    <manual_dir>/chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg
  """

  def list_records(self, root: Path) -> dict[str, list[examples.Record]]:
    root = root / "chest_xray" if (root / "chest_xray").is_dir() else root
    splits = {}
    for folder, split in SOURCE_SPLITS.items():
      if not (root / folder).is_dir():
        continue
      splits[split] = [examples.Record(key=f"{folder}/{label}/{path.stem}", image=path, label=label)
                       for label in CLASS_NAMES
                       for path in sorted((root / folder / label).glob("*.jp*g"))]
    self.require(root / "train")
    return splits


DATASET = records_builder.files_dataset("chest_xray", ChestXray)
