"""Every data option of gradprom_jax, with its default (the embedded synthetic dataset)."""
import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the data config: which dataset, where it lives, how it is split and cropped.

  The defaults build the embedded `synthetic_lesions` dataset, so a new user needs no download.

  >>> config = default_data_config()
  >>> config.name, tuple(config.image_size)
  ('synthetic_lesions', (192, 256))
  """
  config = ml_collections.ConfigDict()
  # Registered dataset name: synthetic_lesions, image_folder, ph2, isic, kvasir_seg, chest_xray, medmnist.
  config.name = "synthetic_lesions"
  # TFDS data directory for the built array_record files; None -> $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data_dir = ml_collections.config_dict.placeholder(str)
  # Folder holding the raw files (a user's folder, or the official archives extracted); unused by synthetic.
  config.manual_dir = ml_collections.config_dict.placeholder(str)
  # (H, W) every image (and mask) is resized to at build time; None keeps the native size (medmnist only).
  config.image_size = (192, 256)
  # (h, w) random training crop; None trains on the full image. Evaluation never crops.
  config.patch_size = ml_collections.config_dict.placeholder(tuple)
  # image_folder: labels.csv column holding the image id (file stem) and the one holding the class.
  config.id_column = "image_id"
  config.label_column = "diagnosis"
  # image_folder: mask file name inside masks/, `{id}` is the image id: {id}_lesion.png, {id}_segmentation.png...
  config.mask_pattern = "{id}_lesion.png"
  # image_folder: 3 (RGB) or 1 (grayscale) channels stored.
  config.num_channels = 3
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
  # synthetic_lesions: number of examples per split and the generator seed.
  config.num_train = 400
  config.num_validation = 100
  config.num_test = 100
  config.synthetic_seed = 0
  # isic: which challenge task: 2018_task1 (segmentation), 2018_task3 (7 classes), 2017_task1, 2017_task3;
  # 2018_task1_task3 / 2017_task1_task3: Task 1 masks and Task 3 labels together (multi-task runs).
  config.isic_task = "2018_task1"
  # medmnist: the .npz file inside manual_dir, e.g. pneumoniamnist_28.npz or dermamnist.npz.
  config.medmnist_file = "pneumoniamnist_28.npz"
  return config
