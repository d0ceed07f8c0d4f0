r"""ISIC 2018 (manual download), ×4 super-resolution + Task 1 lesion segmentation or Task 3 diagnosis.

Put the challenge archives, extracted, in one folder (see `gradprom_jax/data/isic.py`'s
MANUAL_DOWNLOAD_INSTRUCTIONS for the exact names) and pass it as `data.manual_dir`. Options:
  task3   7-class diagnosis (ISIC 2018 Task 3) instead of segmentation
  multitask  both on one enhancer: the Task 1 images with their masks and, where Task 3 labels the
          same image, its diagnosis (data.isic_task=<year>_task1_task3; 2018's Task 1 and Task 3
          may share few images, 2017's Parts 1 and 3 share all: add `2017`)
  2017    the ISIC 2017 layout of the same task
  smoke   a seconds-long run

  python experiments/main.py --config configs/isic.py --config.data.manual_dir=/data/isic2018 \
      --workdir workdirs/isic_seg
  python experiments/main.py --config configs/isic.py:task3 --config.data.manual_dir=/data/isic2018 \
      --workdir workdirs/isic_cls
  python experiments/main.py --config configs/isic.py:multitask,2017 \
      --config.data.manual_dir=/data/isic2017 --workdir workdirs/isic_multitask
"""
from gradprom_jax.configuration.config import (base_config, classification_recognizer,
                                               multitask_config, parse_config_args,
                                               shrink_for_smoke_test)


def get_config(arg: str | None = None):
  options = parse_config_args(arg, ("task3", "multitask", "2017", "smoke"))
  if {"task3", "multitask"} <= options:
    raise ValueError("Config options 'task3' and 'multitask' exclude each other: multitask "
                     "already trains the Task 3 diagnosis, beside the Task 1 masks.")
  config = base_config()
  config.data.name = "isic"
  year = "2017" if "2017" in options else "2018"
  task = "task1_task3" if "multitask" in options else "task3" if "task3" in options else "task1"
  config.data.isic_task = f"{year}_{task}"
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
  if "multitask" in options:
    classifier = classification_recognizer()
    classifier.features, classifier.stage_sizes = 32, (2, 2, 2, 2)
    multitask_config(config, {"segmentation": config.model.recognizer,
                              "classification": classifier})
    config.data.patch_size = None   # the diagnosis needs the whole lesion
  if "smoke" in options:
    shrink_for_smoke_test(config)
  return config
