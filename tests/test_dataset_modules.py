"""A dataset is one module: a toy dataset declared in this file alone builds, loads and trains.

The toy module below is everything a new dataset needs (its builder, its own config key with
comment and check, its `DatasetSpec`); `register_dataset` is the one step that makes
``config.data.name`` select it. No other file of the repository names it.
"""
import dataclasses
import json

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gradprom_jax import data
from gradprom_jax.configuration.config import base_config, shrink_for_smoke_test
from gradprom_jax.configuration.config_help import describe_config, key_comments
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.data import examples, records_builder
from gradprom_jax.data.config import default_data_config
from gradprom_jax.training.run_config import config_differences

# ---- The toy dataset module: bright squares on noise, small or large, with their masks.
TOY_NAME = "toy_squares"
TOY_CLASSES = ("small", "large")


@dataclasses.dataclass
class ToyConfig(tfds.core.BuilderConfig):
  examples_per_split: int = 8


class ToySquares(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Toy squares: class = square size, mask = the square (no download)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=examples.make_features((32, 32, 3), has_mask=True, class_names=TOY_CLASSES))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(index, split)
            for index, split in enumerate(("train", "validation", "test"))}

  def _generate_examples(self, split_index, split):
    for i in range(self.builder_config.examples_per_split):
      rng = np.random.default_rng([split_index, i])
      label = i % 2
      side = 8 + 12 * label
      mask = np.zeros((32, 32), np.uint8)
      top, left = rng.integers(0, 32 - side, 2)
      mask[top:top + side, left:left + side] = 1
      image = rng.integers(0, 96, (32, 32, 3), dtype=np.uint8) + 150 * mask[..., None].astype(np.uint8)
      yield f"{split}_{i}", {"image": examples.encode_png(image), "mask": examples.encode_png(mask),
                             "label": label}


def add_config_keys(config):
  # toy_squares: examples in each split.
  config.toy_examples_per_split = 8


def check_config(config):
  if config.toy_examples_per_split < 4:
    raise ValueError(f"data.toy_examples_per_split={config.toy_examples_per_split} must be at least 4")


def make_builder(config, data_dir):
  fields = dict(examples_per_split=config.toy_examples_per_split)
  return ToySquares(config=ToyConfig(name=records_builder.config_name(**fields), **fields),
                    data_dir=data_dir, file_format="array_record")


DATASET = data.DatasetSpec(name=TOY_NAME, make_builder=make_builder, add_config_keys=add_config_keys,
                           check_config=check_config, smoke_test_keys=dict(toy_examples_per_split=4))
# ---- End of the toy module.


@pytest.fixture
def toy_registered():
  data.register_dataset(DATASET)
  yield DATASET
  del data.DATASETS[TOY_NAME]


def toy_config(data_dir) -> ml_collections.ConfigDict:
  config = base_config()
  config.data.name = TOY_NAME
  config.data.data_dir = str(data_dir)
  shrink_for_smoke_test(config)
  return config


def test_a_registered_dataset_module_is_selected_by_name_and_builds(toy_registered, tmp_path):
  assert TOY_NAME in data.dataset_names()
  assert base_config().data.toy_examples_per_split == 8   # its key, with its default, in the config
  config = toy_config(tmp_path)
  assert config.data.toy_examples_per_split == 4   # and its smoke-test value under :smoke
  validate_config(config, num_devices=4)

  dataset = data.load_dataset(config.data)
  assert dataset.class_names == TOY_CLASSES and dataset.has_mask
  assert dataset.image_shape == (32, 32, 3)
  assert {split: len(source) for split, source in dataset.sources.items()} == {
      "train": 4, "validation": 4, "test": 4}
  assert (tmp_path / "toy_squares").is_dir()   # built under its builder's name

  batch = next(iter(data.make_train_loader(dataset, global_batch_size=4, seed=0)))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["mask"].shape == (4, 32, 32)


def test_a_registered_dataset_module_documents_and_checks_its_keys(toy_registered, tmp_path):
  assert key_comments()["data.toy_examples_per_split"] == "toy_squares: examples in each split."
  assert "# toy_squares: examples in each split." in describe_config(base_config())
  config = toy_config(tmp_path)
  config.data.toy_examples_per_split = 2
  with pytest.raises(ConfigError, match="data.toy_examples_per_split=2 must be at least 4"):
    validate_config(config, num_devices=4)
  with pytest.raises(ValueError, match="at least 4"):   # also refused by the loader, before a build
    data.load_dataset(config.data)
  assert not (tmp_path / "toy_squares").exists()


def test_a_stored_run_config_made_before_a_dataset_existed_still_resumes(toy_registered):
  stored = base_config().to_dict()
  del stored["data"]["toy_examples_per_split"]   # a run made before the toy module was added
  assert config_differences(stored, base_config()) == []
  changed = base_config()
  changed.data.toy_examples_per_split = 16
  assert config_differences(stored, changed) == ["data.toy_examples_per_split: 8 -> 16"]


def test_register_dataset_refuses_a_taken_name_or_key(toy_registered):
  with pytest.raises(ValueError, match="already registered"):
    data.register_dataset(DATASET)
  clash = dataclasses.replace(DATASET, name="toy_clash")
  with pytest.raises(ValueError, match="toy_examples_per_split"):   # another dataset's key
    data.register_dataset(clash)

  def add_shared_key(config):
    config.image_size = (8, 8)
  with pytest.raises(ValueError, match="image_size"):   # a key every dataset reads
    data.register_dataset(dataclasses.replace(DATASET, name="toy_clash", add_config_keys=add_shared_key))
  assert "toy_clash" not in data.DATASETS


def test_an_unregistered_name_is_refused_with_the_valid_names(tmp_path):
  config = default_data_config()
  config.name, config.data_dir = TOY_NAME, str(tmp_path)
  with pytest.raises(ValueError, match="unknown dataset 'toy_squares'; valid names: synthetic_lesions, "):
    data.load_dataset(config)


@pytest.mark.slow
def test_a_registered_dataset_module_trains_a_smoke_step(toy_registered, tmp_path):
  from gradprom_jax.training.train import train_and_evaluate   # heavy: only for this test
  config = toy_config(tmp_path / "tfds")
  config.num_train_steps = config.log_every = config.eval_every = config.checkpoint_every = 1
  results = train_and_evaluate(config, str(tmp_path / "run"))
  assert results["num_train_steps"] == 1 and np.isfinite(results["dice"])
  stored = json.loads((tmp_path / "run" / "config.json").read_text())
  assert stored["data"]["name"] == TOY_NAME and stored["data"]["toy_examples_per_split"] == 4


def test_each_dataset_key_is_declared_once():
  generic = set(default_data_config()) - {key for spec in data.DATASETS.values()
                                          for key in spec.config_keys()}
  assert generic == {"name", "data_dir", "manual_dir", "image_size", "patch_size", "class_names",
                     "prefetch", "num_workers", "read_buffer", "split_seed", "split_fractions",
                     "skip_bad"}
  owners = {key: name for name, spec in data.DATASETS.items() for key in spec.config_keys()}
  assert owners == {"num_train": "synthetic_lesions", "num_validation": "synthetic_lesions",
                    "num_test": "synthetic_lesions", "synthetic_seed": "synthetic_lesions",
                    "id_column": "image_folder", "label_column": "image_folder",
                    "mask_pattern": "image_folder", "num_channels": "image_folder",
                    "isic_task": "isic", "medmnist_file": "medmnist"}


# Folder names of builds made before datasets were modules: <builder name>/<config name>. They must
# not change, or existing data dirs (e.g. ~/tensorflow_datasets/pneumoniamnist) would be rebuilt.
BUILT_FOLDERS = {
    "synthetic_lesions": ("synthetic_lesions", "192x256_edd3c79f"),
    "image_folder": ("image_folder", "192x256_8acc67f4"),
    "ph2": ("ph2", "192x256_959af9f9"),
    "isic": ("isic", "192x256_b2cef859"),
    "kvasir_seg": ("kvasir_seg", "192x256_959af9f9"),
    "chest_xray": ("chest_xray", "192x256_959af9f9"),
}


@pytest.mark.parametrize("name", sorted(BUILT_FOLDERS))
def test_built_folder_names_are_unchanged(name, tmp_path):
  config = default_data_config()
  config.name = name
  # Read by no builder at construction ("/" for the image folder: no masks/ nor labels.csv there).
  config.manual_dir = {"synthetic_lesions": None, "image_folder": "/"}.get(name, "/nonexistent/raw")
  builder = data.DATASETS[name].make_builder(config, str(tmp_path))
  assert (builder.name, builder.builder_config.name) == BUILT_FOLDERS[name]
