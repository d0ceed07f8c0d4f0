"""`image_folder`: a user's own dataset, `images/` + optional `masks/` + optional `labels.csv`.

Layout under `manual_dir`::

    images/<id>.png|jpg|jpeg|bmp|tif   one file per example; <id> is the file stem
    masks/<mask_pattern>               optional; e.g. {id}_lesion.png, {id}_segmentation.png, {id}.png
    labels.csv                         optional; columns <id_column>, <label_column> (others ignored)

A blank id or label in labels.csv is an error naming its lines (with `skip_bad`, those rows are skipped
and counted), so a wrong `label_column` never becomes a class named "".

The train/validation/test split is stratified by label and fixed by `split_seed` and `split_fractions`.
"""
import csv
import functools
from pathlib import Path

from gradprom_jax.data import examples
from gradprom_jax.data import records_builder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_label_csv(path: Path, *, id_column: str, label_column: str,
                   bad_inputs: examples.BadInputLog | None = None) -> dict[str, str | None]:
  """{id: label} from a CSV file; a missing column is an error naming the columns that exist.

  Rows with a blank id or label are one error naming their lines, or, when `bad_inputs` skips bad
  inputs, each is added to it (and an id with a blank label maps to None: skipped, already counted).

  >>> import tempfile
  >>> path = Path(tempfile.mkdtemp()) / "labels.csv"
  >>> _ = path.write_text("image_id,grade,diagnosis\\na,1,nevus\\nb,2,\\n")
  >>> read_label_csv(path, id_column="image_id", label_column="grade")
  {'a': '1', 'b': '2'}
  >>> read_label_csv(path, id_column="image_id", label_column="diagnosis")
  Traceback (most recent call last):
  ...
  gradprom_jax.data.examples.BadInputError: ...labels.csv: 1 row with a blank 'image_id' or 'diagnosis' (line 3: id 'b'); columns are image_id, grade, diagnosis: set data.label_column to the one holding the labels, fill the blanks, or skip these rows with data.skip_bad=True
  """
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    for column in (id_column, label_column):
      if column not in columns:
        raise examples.BadInputError(f"{path}: no column {column!r}; columns are {columns}")
    labels, blank = {}, []
    for row in reader:
      key, label = (row[id_column] or "").strip(), (row[label_column] or "").strip()
      if key and label:
        labels[key] = label
      else:
        blank.append((reader.line_num, key))
        if key:
          labels.setdefault(key, None)
  if blank and (bad_inputs is None or not bad_inputs.skip_bad):
    shown = ", ".join(f"line {line}: id {key!r}" for line, key in blank[:10])
    more = f" and {len(blank) - 10} more" if len(blank) > 10 else ""
    raise examples.BadInputError(
        f"{path}: {len(blank)} row{'s' * (len(blank) > 1)} with a blank {id_column!r} or {label_column!r} "
        f"({shown}{more}); columns are {', '.join(columns)}: set data.label_column to the one holding "
        f"the labels, fill the blanks, or skip these rows with data.skip_bad=True")
  for line, key in blank:
    bad_inputs.add(examples.BadInputError(f"{path}, line {line}: id {key!r} has a blank {label_column!r}"))
  return labels


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
  def labels(self) -> dict[str, str | None] | None:
    path = self.root / "labels.csv"
    if not path.exists():
      return None
    return read_label_csv(path, id_column=self.builder_config.option("id_column", "image_id"),
                          label_column=self.builder_config.option("label_column", "diagnosis"),
                          bad_inputs=self.bad_inputs)

  def class_names(self):
    if self.builder_config.class_names:
      return tuple(self.builder_config.class_names)
    if self.labels is None:
      return None
    return sorted_labels(label for label in self.labels.values() if label is not None)

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
      if labels is not None and key in labels and label is None:
        continue  # Its blank label was already counted as a bad input.
      if labels is not None and label is None:
        self.bad_inputs.add(examples.BadInputError(f"{path}: image has no label in {root / 'labels.csv'}"))
        continue
      if mask is not None and not mask.exists():
        self.bad_inputs.add(examples.BadInputError(f"{path}: mask {mask} not found (mask_pattern {pattern!r})"))
        continue
      records.append(examples.Record(key=key, image=path, mask=mask, label=label))
    return {"train": records}


def add_config_keys(config) -> None:
  """The image folder's keys under ``config.data``."""
  # image_folder: labels.csv column holding the image id (file stem) and the one holding the class.
  config.id_column = "image_id"
  config.label_column = "diagnosis"
  # image_folder: mask file name inside masks/, `{id}` is the image id: {id}_lesion.png, {id}_segmentation.png...
  config.mask_pattern = "{id}_lesion.png"
  # image_folder: 3 (RGB) or 1 (grayscale) channels stored.
  config.num_channels = 3


DATASET = records_builder.files_dataset("image_folder", ImageFolder, add_config_keys=add_config_keys)
