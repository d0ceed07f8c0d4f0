"""`medmnist`: any single-label 2D MedMNIST set from its official `.npz` (e.g. pneumoniamnist_28.npz)."""
from pathlib import Path

import numpy as np

from gradprom_jax.data import examples
from gradprom_jax.data import records_builder

# Class names of the sets people use most; others get "0", "1", ... unless data.class_names is set.
KNOWN_CLASS_NAMES = {
    "pneumoniamnist": ("normal", "pneumonia"),
    "breastmnist": ("malignant", "normal_or_benign"),
    "dermamnist": ("actinic_keratosis", "basal_cell_carcinoma", "benign_keratosis", "dermatofibroma",
                   "melanoma", "melanocytic_nevus", "vascular_lesion"),
}
NPZ_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class Medmnist(records_builder.FilesBuilder):
  """A MedMNIST 2D set (single-label); keeps its official train/val/test split; native size by default."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Download the .npz of a 2D MedMNIST set from https://zenodo.org/records/10519652 (e.g.
  pneumoniamnist.npz or pneumoniamnist_224.npz) into manual_dir and set data.medmnist_file to its name:
    <manual_dir>/<medmnist_file>   (keys train_images, train_labels, val_*, test_*)
  """

  @property
  def npz_path(self) -> Path:
    return self.require(self.manual_root() / self.builder_config.option("medmnist_file"))

  def _arrays(self) -> dict:
    try:
      with np.load(self.npz_path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as e:
      raise examples.BadInputError(f"{self.npz_path}: not a readable .npz ({e})") from e
    missing = [f"{s}_{k}" for s in NPZ_SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
      raise examples.BadInputError(f"{self.npz_path}: missing arrays {missing}")
    if arrays["train_labels"].ndim == 2 and arrays["train_labels"].shape[1] != 1:
      raise examples.BadInputError(f"{self.npz_path}: multi-label sets (labels of shape "
                                   f"{arrays['train_labels'].shape}) are not supported")
    return arrays

  def image_size(self):
    if self.builder_config.image_size is not None:
      return tuple(self.builder_config.image_size)
    return tuple(self._native_shape[:2])

  @property
  def _native_shape(self):
    with np.load(self.npz_path) as npz:
      return npz["train_images"].shape[1:]

  def num_channels(self) -> int:
    shape = self._native_shape
    return 1 if len(shape) == 2 else shape[-1]

  def class_names(self):
    if self.builder_config.class_names:
      return tuple(self.builder_config.class_names)
    flag = Path(self.builder_config.option("medmnist_file")).stem.split("_")[0]
    if flag in KNOWN_CLASS_NAMES:
      return KNOWN_CLASS_NAMES[flag]
    with np.load(self.npz_path) as npz:
      return tuple(str(i) for i in range(int(npz["train_labels"].max()) + 1))

  def list_records(self, root: Path) -> dict[str, list[examples.Record]]:
    arrays = self._arrays()
    return {split: [examples.Record(key=f"{npz_split}_{i:06d}", image=image, label=int(label))
                    for i, (image, label) in enumerate(zip(arrays[f"{npz_split}_images"],
                                                           arrays[f"{npz_split}_labels"].reshape(-1)))]
            for npz_split, split in NPZ_SPLITS.items()}


def add_config_keys(config) -> None:
  """MedMNIST's key under ``config.data``."""
  # medmnist: the .npz file inside manual_dir, e.g. pneumoniamnist_28.npz or dermamnist.npz.
  config.medmnist_file = "pneumoniamnist_28.npz"


DATASET = records_builder.files_dataset("medmnist", Medmnist, add_config_keys=add_config_keys)
