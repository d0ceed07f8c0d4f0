r"""Your own dataset: a folder with `images/`, optional `masks/` and an optional `labels.csv`.

  python experiments/main.py --config configs/image_folder.py --config.data.manual_dir=/data/mine \
      --config.data.mask_pattern='{id}_segmentation.png' --workdir workdirs/mine
  python experiments/main.py --config configs/image_folder.py:classification \
      --config.data.manual_dir=/data/mine --config.data.label_column=diagnosis --workdir workdirs/mine_cls

Keys: data.manual_dir, data.id_column, data.label_column, data.mask_pattern, data.class_names,
data.split_seed, data.split_fractions, data.image_size, data.num_channels, data.skip_bad.
"""
from gradprom_jax.configuration.config import (base_config, classification_recognizer,
                                               parse_config_args, shrink_for_smoke_test)


def get_config(arg: str | None = None):
  options = parse_config_args(arg, ("classification", "smoke"))
  config = base_config()
  config.data.name = "image_folder"
  config.data.image_size = (192, 256)
  config.data.patch_size = (96, 128)
  if "classification" in options:
    config.task.recognition = "classification"
    config.model.recognizer = classification_recognizer()
    config.data.patch_size = None
  if "smoke" in options:
    shrink_for_smoke_test(config)
  return config
