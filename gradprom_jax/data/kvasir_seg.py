"""`kvasir_seg`: Kvasir-SEG polyp segmentation (1000 colonoscopy images, binary polyp masks, no labels)."""
from pathlib import Path

from gradprom_jax.data import examples
from gradprom_jax.data import records_builder


class KvasirSeg(records_builder.FilesBuilder):
  """Kvasir-SEG colonoscopy images with polyp masks; split by the data config's seed and fractions."""

  HAS_MASK = True
  MASK_CLASS_NAMES = ("background", "polyp")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download kvasir-seg.zip from https://datasets.simula.no/kvasir-seg/ and extract it into manual_dir:
    <manual_dir>/Kvasir-SEG/images/<id>.jpg
    <manual_dir>/Kvasir-SEG/masks/<id>.jpg
  """

  def list_records(self, root: Path) -> dict[str, list[examples.Record]]:
    root = root / "Kvasir-SEG" if (root / "Kvasir-SEG").is_dir() else root
    images = sorted(self.require(root / "images").glob("*.jpg"))
    masks_dir = self.require(root / "masks")
    records = []
    for image in images:
      mask = masks_dir / image.name
      if not mask.exists():
        self.bad_inputs.add(examples.BadInputError(f"{image}: no mask {mask}"))
        continue
      records.append(examples.Record(key=image.stem, image=image, mask=mask))
    return {"train": records}


DATASET = records_builder.files_dataset("kvasir_seg", KvasirSeg)
