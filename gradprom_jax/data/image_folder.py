"""`image_folder`: a user's own dataset, `images/` + optional `masks/` + optional `labels.csv`.

Layout under `manual_dir`::

    images/<id>.png|jpg|jpeg|bmp|tif   one file per example; <id> is the file stem
    masks/<mask_pattern>               optional; e.g. {id}_lesion.png, {id}_segmentation.png, {id}.png
    labels.csv                         optional; columns <id_column>, <label_column> (others ignored)

The train/validation/test split is stratified by label and fixed by `split_seed` and `split_fractions`.
"""
import csv
import functools
from pathlib import Path

from gradprom_jax.data import examples
from gradprom_jax.data import records_builder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_label_csv(path: Path, *, id_column: str, label_column: str) -> dict[str, str]:
  """{id: label} from a CSV file; a missing column is an error naming the columns that exist."""
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    for column in (id_column, label_column):
      if column not in (reader.fieldnames or []):
        raise examples.BadInputError(f"{path}: no column {column!r}; columns are {reader.fieldnames}")
    return {row[id_column].strip(): row[label_column].strip() for row in reader}


def sorted_labels(labels) -> tuple[str, ...]:
  """Distinct label values, numerically sorted when they are all integers ("0", "1", "2", "10")."""
  values = set(labels)
  if all(v.lstrip("-").isdigit() for v in values):
    return tuple(sorted(values, key=int))
  return tuple(sorted(values))


class ImageFolder(records_builder.FilesBuilder):
  """A user's image folder (images/, optional masks/ and labels.csv), split deterministically."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  <manual_dir>/images/<id>.png (or .jpg/.jpeg/.bmp/.tif)
  <manual_dir>/masks/<mask_pattern with {id}>   (optional, binary: non-zero = lesion)
  <manual_dir>/labels.csv with columns <id_column>,<label_column>   (optional)
  """

  @property
  def root(self) -> Path:
    return self.manual_root()

  def num_channels(self) -> int:
    return int(self.builder_config.option("num_channels", 3))

  def has_mask(self) -> bool:
    return (self.root / "masks").is_dir()

  @functools.cached_property
  def labels(self) -> dict[str, str] | None:
    path = self.root / "labels.csv"
    if not path.exists():
      return None
    return read_label_csv(path, id_column=self.builder_config.option("id_column", "image_id"),
                          label_column=self.builder_config.option("label_column", "label"))

  def class_names(self):
    if self.builder_config.class_names:
      return tuple(self.builder_config.class_names)
    return None if self.labels is None else sorted_labels(self.labels.values())

  def list_records(self, root: Path) -> dict[str, list[examples.Record]]:
    images = {p.stem: p for p in sorted(self.require(root / "images").iterdir())
              if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
      raise records_builder.ManualDownloadError(f"{root / 'images'}: no images ({', '.join(IMAGE_SUFFIXES)})")
    labels = self.labels
    if labels is not None:
      for missing in sorted(set(labels) - set(images)):
        self.bad_inputs.add(examples.BadInputError(
            f"{root / 'labels.csv'}: id {missing!r} has no image in {root / 'images'}"))
    pattern = self.builder_config.option("mask_pattern", "{id}_lesion.png")
    records = []
    for key, path in images.items():
      mask = root / "masks" / pattern.format(id=key) if self.has_mask() else None
      label = None if labels is None else labels.get(key)
      if labels is not None and label is None:
        self.bad_inputs.add(examples.BadInputError(f"{path}: image has no label in {root / 'labels.csv'}"))
        continue
      if mask is not None and not mask.exists():
        self.bad_inputs.add(examples.BadInputError(f"{path}: mask {mask} not found (mask_pattern {pattern!r})"))
        continue
      records.append(examples.Record(key=key, image=path, mask=mask, label=label))
    return {"train": records}
