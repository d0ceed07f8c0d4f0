"""Base TFDS builder for datasets read from files: parse a layout into `Record`s, split, validate, encode.

A concrete builder (image_folder, ph2, isic, ...) only says how its layout lists records; this base
handles sizing, the stratified split, bad inputs and the manual-download error. TFDS writes every
build into an `incomplete.*` folder renamed only on success, so a failed build leaves nothing behind.
"""
import abc
import dataclasses
import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import ml_collections
import tensorflow_datasets as tfds

from gradprom_jax.data import dataset_spec
from gradprom_jax.data import examples
from gradprom_jax.data import splits as splits_lib


class ManualDownloadError(FileNotFoundError):
  """The raw files of a dataset are not where the builder looks; the message says what to put where."""


@dataclasses.dataclass
class FilesConfig(tfds.core.BuilderConfig):
  """Options shared by every file-based builder; `name` is derived from them (see `config_name`)."""
  manual_dir: str | None = None
  image_size: tuple[int, int] | None = (192, 256)
  split_seed: int = 0
  split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
  skip_bad: bool = False
  class_names: tuple[str, ...] | None = None
  options: tuple[tuple[str, object], ...] = ()  # Builder-specific options, as sorted (key, value) pairs.

  def option(self, key: str, default=None):
    return dict(self.options).get(key, default)


def config_name(**fields) -> str:
  """A short, stable config name from the fields: each distinct set of options gets its own TFDS folder.

  >>> config_name(image_size=(32, 32), seed=0)
  '32x32_fe55a6cd'
  """
  size = fields.get("image_size")
  prefix = "native" if size is None else f"{size[0]}x{size[1]}"
  digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]
  return f"{prefix}_{digest}"


def make_config(**fields) -> FilesConfig:
  """A `FilesConfig` named by its fields; `manual_dir` is resolved so the name names one folder."""
  if fields.get("manual_dir") is not None:
    fields["manual_dir"] = str(Path(fields["manual_dir"]).expanduser().resolve())
  fields["options"] = tuple(sorted(dict(fields.get("options", ())).items()))
  return FilesConfig(name=config_name(**fields), **fields)


class FilesBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
  """A TFDS builder whose examples come from files under `manual_dir`; subclasses parse one layout."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []
  NUM_CHANNELS = 3
  HAS_MASK = False
  CLASS_NAMES: Sequence[str] | None = None  # None: no label (segmentation-only datasets).
  MASK_CLASS_NAMES: Sequence[str] = ("background", "lesion")  # Mask value 0, 1.

  @functools.cached_property
  def bad_inputs(self) -> examples.BadInputLog:
    # A property, not set in __init__: TFDS's __init__ already reads the layout (via `_info`).
    return examples.BadInputLog(skip_bad=self.builder_config.skip_bad)

  # ---- What a subclass says about its layout.
  @abc.abstractmethod
  def list_records(self, root: Path) -> dict[str, list[examples.Record]]:
    """Records per shipped split ("train" at least) found under `root`; bad ones go to `self.bad_inputs`."""

  def class_names(self) -> Sequence[str] | None:
    return self.builder_config.class_names or self.CLASS_NAMES

  def num_channels(self) -> int:
    return self.NUM_CHANNELS

  def has_mask(self) -> bool:
    return self.HAS_MASK

  def image_size(self) -> tuple[int, int] | None:
    size = self.builder_config.image_size
    if size is None:
      raise ValueError(f"{self.name}: data.image_size must be set (H, W): its images differ in size")
    return tuple(size)

  # ---- TFDS plumbing.
  def _info(self) -> tfds.core.DatasetInfo:
    height, width = self.image_size() or (None, None)
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip().splitlines()[0],
        features=examples.make_features((height, width, self.num_channels()), has_mask=self.has_mask(),
                                        class_names=self.class_names()))

  def manual_download_instructions(self) -> str:
    """What to download and where to put it, for this builder config only."""
    return self.MANUAL_DOWNLOAD_INSTRUCTIONS

  def manual_download_error(self, problem: str) -> ManualDownloadError:
    """A one-line error: the problem, the flag to set and this config's download instructions."""
    lines = [line.strip() for line in self.manual_download_instructions().splitlines() if line.strip()]
    steps = "".join(line + (" " if line.endswith(":") else "; ") for line in lines).rstrip("; ")
    return ManualDownloadError(f"{self.name}: {problem}. Pass --config.data.manual_dir=FOLDER; what FOLDER "
                               f"must hold: {steps}")

  def manual_root(self, dl_manager=None) -> Path:
    # Only the config's manual_dir: TFDS's own default (<data_dir>/downloads/manual) is never used,
    # and asking the download manager for it raises TFDS's multi-line AssertionError.
    del dl_manager
    root = self.builder_config.manual_dir
    if root is None:
      raise self.manual_download_error("data.manual_dir is not set")
    if not Path(root).is_dir():
      raise self.manual_download_error(f"manual_dir {root!r} is not a folder")
    return Path(root)

  def require(self, path: Path) -> Path:
    """`path`, or a ManualDownloadError that quotes the download instructions."""
    if not path.exists():
      raise self.manual_download_error(f"expected {path} but it does not exist")
    return path

  def _split_generators(self, dl_manager):
    shipped = self.list_records(self.manual_root(dl_manager))
    names = self.class_names()
    config = self.builder_config
    strata = (lambda r: r.label) if names is not None else (lambda r: 0)
    for split in shipped.values():
      split.sort(key=lambda r: r.key)  # Filesystem order must not change the split.
    all_splits = splits_lib.complete_splits(shipped, strata, fractions=config.split_fractions,
                                            seed=config.split_seed)
    empty = [name for name, records in all_splits.items() if not records]
    if empty:
      raise ValueError(f"{self.name}: splits {empty} would be empty; found {sum(map(len, shipped.values()))} "
                       f"usable examples, split_fractions {tuple(config.split_fractions)}")
    return {name: self._generate_examples(records, name) for name, records in all_splits.items()}

  def _generate_examples(self, records: list[examples.Record], split: str):
    before = len(self.bad_inputs.messages)
    yield from self.bad_inputs.encode_all(
        records, image_size=self.builder_config.image_size, num_channels=self.num_channels(),
        class_names=self.class_names(), has_mask=self.has_mask())
    skipped = len(self.bad_inputs.messages) - before
    if skipped:
      logging.warning("%s/%s: skipped %d bad inputs in split %r", self.name, self.builder_config.name,
                      skipped, split)


def files_dataset(name: str, builder_cls: type[FilesBuilder], **spec_fields) -> dataset_spec.DatasetSpec:
  """The spec of a dataset read from files by `builder_cls`: the config's shared keys (manual_dir,
  image_size, split_seed, split_fractions, skip_bad, class_names) plus the dataset's own keys,
  which reach the builder as `FilesConfig.options` and so name the build. `spec_fields`: the
  other fields of `DatasetSpec` (add_config_keys, check_config)."""
  def make_builder(config: ml_collections.ConfigDict, data_dir: str) -> FilesBuilder:
    image_size = None if config.image_size is None else tuple(config.image_size)
    class_names = None if config.class_names is None else tuple(config.class_names)
    builder_config = make_config(
        manual_dir=config.manual_dir, image_size=image_size, split_seed=config.split_seed,
        split_fractions=tuple(config.split_fractions), skip_bad=config.skip_bad, class_names=class_names,
        options={key: config[key] for key in spec.config_keys()})
    return builder_cls(config=builder_config, data_dir=data_dir, file_format="array_record")

  spec = dataset_spec.DatasetSpec(name=name, make_builder=make_builder, **spec_fields)
  return spec
