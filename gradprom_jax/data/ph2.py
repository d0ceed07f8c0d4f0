"""`ph2`: the PH2 dermoscopy database in its released layout (200 images, lesion masks, 3 diagnoses).

PH2 ships no split: train/validation/test are drawn with the stratified split of the data config.
"""
import re
from pathlib import Path

from gradprom_jax.data import examples
from gradprom_jax.data import records_builder

CLASS_NAMES = ("common_nevus", "atypical_nevus", "melanoma")


def read_ph2_diagnoses(path: Path) -> dict[str, int]:
  """{IMDxxx: clinical diagnosis 0/1/2} from PH2_dataset.txt: the released `||`-table or a tab-separated copy.

  The diagnosis is the first field after the name that is a lone 0, 1 or 2 (the histological
  diagnosis column before it is empty or text).
  """
  diagnoses = {}
  for line in path.read_text(errors="replace").splitlines():
    fields = [f.strip() for f in re.split(r"\|\||\||\t", line)]
    fields = [f for f in fields if f != ""] if "\t" in line else fields
    names = [i for i, f in enumerate(fields) if re.fullmatch(r"IMD\d+", f)]
    if not names:
      continue
    rest = [f for f in fields[names[0] + 1:] if f in ("0", "1", "2")]
    if not rest:
      raise examples.BadInputError(f"{path}: no clinical diagnosis 0/1/2 on the line of {fields[names[0]]}")
    diagnoses[fields[names[0]]] = int(rest[0])
  if not diagnoses:
    raise examples.BadInputError(f"{path}: no IMDxxx rows found")
  return diagnoses


class Ph2(records_builder.FilesBuilder):
  """PH2 dermoscopy images with lesion masks and clinical diagnosis (common/atypical nevus, melanoma)."""

  HAS_MASK = True
  CLASS_NAMES = CLASS_NAMES
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Get PH2Dataset.rar from https://www.fc.up.pt/addi/ph2%20database.html and extract it into manual_dir:
    <manual_dir>/PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp
    <manual_dir>/PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_lesion/IMDxxx_lesion.bmp
    <manual_dir>/PH2Dataset/PH2_dataset.txt
  (manual_dir may also be the PH2Dataset folder itself.)
  """

  def list_records(self, root: Path) -> dict[str, list[examples.Record]]:
    if (root / "PH2Dataset").is_dir():
      root = root / "PH2Dataset"
    images_dir = self.require(root / "PH2 Dataset images")
    diagnoses = read_ph2_diagnoses(self.require(root / "PH2_dataset.txt"))
    records = []
    for key in sorted(diagnoses):
      folder = images_dir / key
      image = folder / f"{key}_Dermoscopic_Image" / f"{key}.bmp"
      if not image.exists():
        self.bad_inputs.add(examples.BadInputError(f"{root / 'PH2_dataset.txt'}: {key} has no image {image}"))
        continue
      records.append(examples.Record(key=key, image=image, mask=folder / f"{key}_lesion" / f"{key}_lesion.bmp",
                                     label=diagnoses[key]))
    for folder in sorted(images_dir.iterdir()):
      if folder.is_dir() and folder.name not in diagnoses:
        self.bad_inputs.add(examples.BadInputError(f"{folder}: image has no diagnosis in PH2_dataset.txt"))
    return {"train": records}


DATASET = records_builder.files_dataset("ph2", Ph2)
