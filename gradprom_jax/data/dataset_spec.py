"""`DatasetSpec`: everything the rest of the code needs from one dataset, declared by the dataset's module.

A dataset is one module of `gradprom_jax/data/` ending in ``DATASET = DatasetSpec(...)``: its name
(``config.data.name``), its TFDS builder (which declares its classes, masks and manual-download
instructions), the ``config.data.*`` keys of its own (defaults with comments, shown by ``--help``)
and their checks. `registry.DATASETS` holds every spec by name; every list of datasets or of their
keys is read from it.

>>> import ml_collections
>>> def add_config_keys(config):
...   # toy: how many examples per split.
...   config.toy_count = 4
>>> spec = DatasetSpec(name="toy", make_builder=lambda config, data_dir: None,
...                    add_config_keys=add_config_keys)
>>> spec.config_keys()
{'toy_count': 4}
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections


def _no_keys(config: ml_collections.ConfigDict) -> None:
  del config


def _no_checks(config: ml_collections.ConfigDict) -> None:
  del config


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One dataset, as its module declares it.

  Attributes:
    name: the value of ``config.data.name`` that selects it.
    make_builder: ``(data config, TFDS data dir) -> tfds.core.DatasetBuilder``; the builder's class
      name names its folder in the data dir (keep it, or existing builds are not found), its
      config's name the build of one set of options.
    add_config_keys: adds the dataset's own keys to the data config, each with its default and the
      comment above it (``--help`` reads the comment from this function's source). A key added
      after runs were made must default to the value that reproduces the code without it: a stored
      run config that lacks the key is taken to hold this default.
    check_config: raises ``ValueError`` naming the key (``data.<key>``) if the data config cannot
      build this dataset; runs before anything is built.
    smoke_test_keys: the data config values of a seconds-long run (a config's ``:smoke``); empty:
      the images are resized to 64 pixels on their longer side.
  """
  name: str
  make_builder: Callable[[ml_collections.ConfigDict, str], Any]
  add_config_keys: Callable[[ml_collections.ConfigDict], None] = _no_keys
  check_config: Callable[[ml_collections.ConfigDict], None] = _no_checks
  smoke_test_keys: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def config_keys(self) -> dict[str, Any]:
    """The dataset's own keys with their defaults (sorted by key)."""
    config = ml_collections.ConfigDict()
    self.add_config_keys(config)
    return {key: config[key] for key in config.to_dict()}
