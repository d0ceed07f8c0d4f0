r"""PH2 dermoscopy (200 images, lesion masks, 3-class diagnosis), ×4 super-resolution.

Default: lesion segmentation on the resized copy in `../shared/data/ph2` (an image folder:
`images/IMDxxx.png`, `masks/IMDxxx_lesion.png`, `labels.csv`). Options:
  classification  3-class diagnosis (common nevus / atypical nevus / melanoma) instead of masks
  multitask       both tasks on one enhancer: lesion segmentation and the 3-class diagnosis, each
                  with its recogniser (model.recognizers.<task>) and options (task.<task>), on
                  whole images (the diagnosis needs the whole lesion); metrics dice/segmentation,
                  accuracy/classification, ...
  official        read the PH2 release as downloaded (`PH2 Dataset images/IMDxxx/...`, `PH2_dataset.txt`)
  smoke           a seconds-long run

  python experiments/main.py --config configs/ph2.py --workdir workdirs/ph2
  python experiments/main.py --config configs/ph2.py:classification --workdir workdirs/ph2_cls
  python experiments/main.py --config configs/ph2.py:multitask --workdir workdirs/ph2_multitask
  python experiments/compare.py --config configs/ph2.py:multitask --workdir workdirs/cmp_ph2_multitask \
      --methods gradprom,joint,enhance_only --seeds 0,1,2
  python experiments/main.py --config configs/ph2.py:official \
      --config.data.manual_dir=/data/PH2Dataset --workdir workdirs/ph2_official
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared_data import shared_path  # noqa: E402  (config files are loaded by path)

from gradprom_jax.configuration.config import (base_config, classification_recognizer,  # noqa: E402
                                               multitask_config, parse_config_args,
                                               shrink_for_smoke_test)


def get_config(arg: str | None = None):
  options = parse_config_args(arg, ("classification", "multitask", "official", "smoke"))
  if {"classification", "multitask"} <= options:
    raise ValueError("Config options 'classification' and 'multitask' exclude each other: "
                     "multitask already trains the diagnosis, beside the masks.")
  config = base_config()
  if "official" in options:
    config.data.name = "ph2"
  else:
    config.data.name = "image_folder"
    config.data.manual_dir = shared_path("ph2")
    config.data.id_column, config.data.label_column = "image_id", "diagnosis"
    config.data.mask_pattern = "{id}_lesion.png"
    config.data.class_names = ("common_nevus", "atypical_nevus", "melanoma")
  config.data.image_size = (192, 256)
  config.data.patch_size = (96, 128)
  config.num_train_steps = 2000
  if "classification" in options:
    config.task.recognition = "classification"
    config.model.recognizer = classification_recognizer()
    config.data.patch_size = None   # the diagnosis needs the whole lesion
  if "multitask" in options:
    multitask_config(config, {"segmentation": config.model.recognizer,
                              "classification": classification_recognizer()})
    config.data.patch_size = None   # the diagnosis needs the whole lesion
  if "smoke" in options:
    shrink_for_smoke_test(config)
  return config
