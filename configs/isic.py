r"""ISIC 2018 (manual download), ×4 super-resolution + Task 1 lesion segmentation or Task 3 diagnosis.

Put the challenge archives, extracted, in one folder (see `gradprom_jax/data/isic.py`'s
MANUAL_DOWNLOAD_INSTRUCTIONS for the exact names) and pass it as `data.manual_dir`. Options:
  task3   7-class diagnosis (ISIC 2018 Task 3) instead of segmentation
  2017    the ISIC 2017 layout of the same task
  smoke   a seconds-long run

  python experiments/main.py --config configs/isic.py --config.data.manual_dir=/data/isic2018 \
      --workdir workdirs/isic_seg
  python experiments/main.py --config configs/isic.py:task3 --config.data.manual_dir=/data/isic2018 \
      --workdir workdirs/isic_cls
"""
from gradprom_jax.config import (base_config, classification_recognizer, parse_config_args,
                                 shrink_for_smoke_test)


def get_config(arg: str | None = None):
  options = parse_config_args(arg, ("task3", "2017", "smoke"))
  config = base_config()
  config.data.name = "isic"
  year = "2017" if "2017" in options else "2018"
  config.data.isic_task = f"{year}_task3" if "task3" in options else f"{year}_task1"
  config.data.image_size = (192, 256)
  config.data.patch_size = (96, 128)
  config.num_train_steps = 20000
  config.batch_size = 32
  config.eval_every = 2000
  config.checkpoint_every = 2000
  config.model.enhancer.features, config.model.enhancer.num_blocks = 64, 8
  config.model.recognizer.features = 32
  if "task3" in options:
    config.task.recognition = "classification"
    config.model.recognizer = classification_recognizer()
    config.model.recognizer.features = 32
    config.model.recognizer.stage_sizes = (2, 2, 2, 2)
    config.data.patch_size = None
  if "smoke" in options:
    shrink_for_smoke_test(config)
  return config
