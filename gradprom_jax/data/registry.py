"""`load_dataset`: dataset name -> TFDS builder, built on first use, returned as random-access sources."""
import contextlib
import dataclasses
import io
import logging
import time
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from gradprom_jax.data import records_builder
from gradprom_jax.data.file_lock import FileLock


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A built dataset: random-access sources per split plus what a model needs to know about it.

  `skipped` lists the bad inputs skipped by the build that just ran (empty when reusing a build).
  `class_counts` gives, per split, the number of examples of each class (None without labels);
  `mask_class_names` names the mask values 0, 1, ... (None without masks).
  """
  name: str
  sources: Mapping[str, object]
  class_names: tuple[str, ...] | None
  image_shape: tuple[int, int, int]
  has_mask: bool
  skipped: tuple[str, ...] = ()
  class_counts: Mapping[str, tuple[int, ...]] | None = None
  mask_class_names: tuple[str, ...] | None = None

  @property
  def num_classes(self) -> int:
    return 0 if self.class_names is None else len(self.class_names)

  @property
  def has_label(self) -> bool:
    return self.class_names is not None


def _files_builder(builder_cls, **options) -> Callable:
  """A factory: data config -> file-based builder named by the config's shared keys plus `options`."""
  def make(config: ml_collections.ConfigDict, data_dir: str):
    image_size = None if config.image_size is None else tuple(config.image_size)
    class_names = None if config.class_names is None else tuple(config.class_names)
    builder_config = records_builder.make_config(
        manual_dir=config.manual_dir, image_size=image_size, split_seed=config.split_seed,
        split_fractions=tuple(config.split_fractions), skip_bad=config.skip_bad, class_names=class_names,
        options={key: config[key] for key in options})
    return builder_cls(config=builder_config, data_dir=data_dir, file_format="array_record")
  return make


def _registry() -> dict[str, Callable]:
  # Imported here so that importing gradprom_jax.data does not register every TFDS builder up front.
  from gradprom_jax.data import (chest_xray, image_folder, isic, kvasir_seg, medmnist, ph2,
                                 synthetic_lesions)
  return {
      "synthetic_lesions": synthetic_lesions.make_builder,
      "image_folder": _files_builder(image_folder.ImageFolder, id_column=..., label_column=...,
                                     mask_pattern=..., num_channels=...),
      "ph2": _files_builder(ph2.Ph2),
      "isic": _files_builder(isic.Isic, isic_task=...),
      "kvasir_seg": _files_builder(kvasir_seg.KvasirSeg),
      "chest_xray": _files_builder(chest_xray.ChestXray),
      "medmnist": _files_builder(medmnist.Medmnist, medmnist_file=...),
  }


DATASET_NAMES = ("synthetic_lesions", "image_folder", "ph2", "isic", "kvasir_seg", "chest_xray", "medmnist")


def resolve_data_dir(data_dir: str | None) -> str:
  """The TFDS data dir: the config's, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  return str(Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser())


@contextlib.contextmanager
def build_lock(builder: tfds.core.DatasetBuilder, name: str) -> Iterator[None]:
  """Holds the lock on building ``builder``'s dataset and config in its data dir.

  Two runs that need the same unbuilt dataset at once (a sweep's first seeds, a job array) would
  both build it and one would fail on TFDS's final rename; with this lock one builds and the others
  wait for it (logging whom they wait for), then reuse its files. The lock is an ``flock`` that dies
  with its holder (see :mod:`gradprom_jax.data.file_lock` for NFS and Lustre), so a killed build never
  blocks the next one.
  """
  data_dir = Path(builder.data_dir_root)
  data_dir.mkdir(parents=True, exist_ok=True)
  lock = FileLock(data_dir / f".{builder.name}-{builder.builder_config.name}.build.lock")
  if not lock.acquire(blocking=False):
    holder = lock.holder()
    for _ in range(20):   # the holder writes its record just after taking the lock: let it land
      if holder:
        break
      time.sleep(0.05)
      holder = lock.holder()
    logging.warning("waiting for %s (host %s) building %s (%s) in %s", holder.get("pid", "?"),
                    holder.get("host", "?"), name, builder.builder_config.name, data_dir)
    lock.acquire()
  try:
    yield
  finally:
    lock.release()


def load_dataset(config: ml_collections.ConfigDict) -> Dataset:
  """Builds the dataset named by `config.name` (once; later calls reuse the files) and opens its splits.

  >>> import tempfile
  >>> from gradprom_jax.data.config import default_data_config
  >>> config = default_data_config()
  >>> config.data_dir = tempfile.mkdtemp()
  >>> config.image_size, config.num_train, config.num_validation, config.num_test = (16, 16), 4, 2, 2
  >>> dataset = load_dataset(config)
  >>> len(dataset.sources["train"]), dataset.image_shape, dataset.num_classes, dataset.has_mask
  (4, (16, 16, 3), 3, True)
  """
  registry = _registry()
  if config.name not in registry:
    raise ValueError(f"unknown dataset {config.name!r}; valid names: {', '.join(DATASET_NAMES)}")
  data_dir = resolve_data_dir(config.data_dir)
  builder = registry[config.name](config, data_dir)
  skipped = ()
  if not builder.is_prepared():
    with build_lock(builder, config.name):
      # Reopened: another process may have built it while this one waited for the lock.
      builder = registry[config.name](config, data_dir)
      if not builder.is_prepared():
        logging.info("Building %s (%s) into %s", config.name, builder.builder_config.name,
                     builder.data_dir)
        manual_dir = getattr(builder.builder_config, "manual_dir", None)
        # TFDS prints its own banner on stdout; keep stdout for the caller and log it instead.
        with contextlib.redirect_stdout(io.StringIO()) as banner, _no_empty_folders_left_on_failure(
            Path(builder.data_dir), Path(builder.data_dir_root)):
          builder.download_and_prepare(
              file_format="array_record",
              download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        logging.debug("%s", banner.getvalue().strip())   # "Downloading ... Unknown size": noise here
        skipped = tuple(getattr(getattr(builder, "bad_inputs", None), "messages", ()))
        if skipped:
          logging.warning("%s: skipped %d bad inputs (skip_bad=True)", config.name, len(skipped))
  features = builder.info.features
  label = features["label"] if "label" in features else None
  class_counts = None if label is None else count_classes(builder, label.num_classes)
  if class_counts is not None:
    logging.info("%s classes, examples per split: %s", config.name,
                 describe_class_counts(tuple(label.names), class_counts))
  return Dataset(
      name=config.name,
      sources=builder.as_data_source(),
      class_names=None if label is None else tuple(label.names),
      image_shape=tuple(features["image"].shape),
      has_mask="mask" in features,
      skipped=skipped,
      class_counts=class_counts,
      mask_class_names=(tuple(getattr(builder, "MASK_CLASS_NAMES", ("background", "lesion")))
                        if "mask" in features else None))


def count_classes(builder: tfds.core.DatasetBuilder, num_classes: int) -> dict[str, tuple[int, ...]]:
  """Examples per class in every split, read from the labels alone (images are not decoded)."""
  skip = {key: tfds.decode.SkipDecoding() for key in ("image", "mask") if key in builder.info.features}
  counts = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split, decoders=skip)
    labels = [int(example["label"]) for example in source.__getitems__(range(len(source)))]
    counts[split] = tuple(int(n) for n in np.bincount(labels, minlength=num_classes))
  return counts


def describe_class_counts(class_names: tuple[str, ...], counts: Mapping[str, tuple[int, ...]]) -> str:
  """One line naming every class and its count in each split.

  >>> describe_class_counts(("benign", "malignant"), {"train": (50, 20), "test": (10, 4)})
  "'benign' train 50 / test 10, 'malignant' train 20 / test 4"
  """
  return ", ".join(f"{name!r} " + " / ".join(f"{split} {split_counts[k]}" for split, split_counts in counts.items())
                   for k, name in enumerate(class_names))


@contextlib.contextmanager
def _no_empty_folders_left_on_failure(dataset_dir: Path, data_dir: Path) -> Iterator[None]:
  """Removes the empty folders a failed build created (TFDS makes them before reading any file)."""
  candidates = [dataset_dir, *[p for p in dataset_dir.parents if data_dir in p.parents],
                data_dir / "downloads" / "extracted", data_dir / "downloads"]
  new = [path for path in candidates if not path.exists()]
  try:
    yield
  except BaseException:
    for path in new:  # Deepest first.
      with contextlib.suppress(OSError):  # Not empty (another build's files): keep it.
        path.rmdir()
    raise
