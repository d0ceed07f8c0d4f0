"""Every data option of gradprom_jax, with its default (the embedded synthetic dataset).

The keys every dataset reads are here; each dataset's own keys are declared by its module
(`DatasetSpec.add_config_keys`) and added after them.
"""
import ml_collections

from gradprom_jax.data import registry


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the data config: which dataset, where it lives, how it is split and cropped.

  The defaults build the embedded `synthetic_lesions` dataset, so a new user needs no download.

  >>> config = default_data_config()
  >>> config.name, tuple(config.image_size)
  ('synthetic_lesions', (192, 256))
  >>> config.isic_task   # a key of the isic module
  '2018_task1'
  """
  config = ml_collections.ConfigDict()
  # Registered dataset name, one module of gradprom_jax/data each (gradprom_jax.data.dataset_names()
  # lists them; so does the error for a wrong one). Each adds its own keys below, named in their comments.
  config.name = "synthetic_lesions"
  # TFDS data directory for the built array_record files; None -> $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data_dir = ml_collections.config_dict.placeholder(str)
  # Folder holding the raw files (a user's folder, or the official archives extracted); unused by synthetic.
  config.manual_dir = ml_collections.config_dict.placeholder(str)
  # (H, W) every image (and mask) is resized to at build time; None keeps the native size (medmnist only).
  config.image_size = (192, 256)
  # (h, w) random training crop; None trains on the full image. Evaluation never crops.
  config.patch_size = ml_collections.config_dict.placeholder(tuple)
  # Class names in label-index order; None takes them from the data (sorted label values).
  config.class_names = ml_collections.config_dict.placeholder(tuple)
  # Training batches placed on the devices ahead of the one being trained on (0: none), so the
  # host-to-device copy overlaps the step; the checkpointed data position stays exact.
  config.prefetch = 2
  # grain worker processes decoding and augmenting training batches (0: in the training process).
  config.num_workers = 0
  # Training batches grain reads ahead, per process (per worker with num_workers): what the loader
  # holds in host memory (grain's own default, 500, is gigabytes at ISIC size). At least 1.
  config.read_buffer = 4
  # Seed and (train, validation, test) fractions of the deterministic stratified split, used for the
  # splits a source does not ship (PH2 and Kvasir ship none; chest X-ray and MedMNIST ship all three).
  config.split_seed = 0
  config.split_fractions = (0.7, 0.15, 0.15)
  # False: a bad input (corrupt image, wrong mask size, unknown label...) stops the build naming the file.
  # True: skip it and report how many were skipped.
  config.skip_bad = False
  for spec in registry.DATASETS.values():
    spec.add_config_keys(config)
  return config
