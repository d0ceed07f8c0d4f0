r"""PneumoniaMNIST (MedMNIST v2, 28×28 chest X-rays, `../shared/data/pneumoniamnist`):
low-dose (Poisson) denoising + normal/pneumonia classification, official splits.

  python experiments/main.py --config configs/pneumoniamnist.py --workdir workdirs/pneumoniamnist
  python experiments/main.py --config configs/pneumoniamnist.py \
      --config.data.manual_dir=/data/medmnist --config.data.medmnist_file=dermamnist.npz ...
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _shared_data import shared_path  # noqa: E402  (config files are loaded by path)

from gradprom_jax.configuration.config import (base_config, classification_recognizer,  # noqa: E402
                                               denoising_enhancer, parse_config_args,
                                               shrink_for_smoke_test)


def get_config(arg: str | None = None):
  options = parse_config_args(arg, ("smoke",))
  config = base_config()
  config.data.name = "medmnist"
  config.data.manual_dir = shared_path("pneumoniamnist")
  config.data.medmnist_file = "pneumoniamnist_28.npz"
  config.data.image_size = None   # native 28×28
  config.data.patch_size = None
  config.task.recognition = "classification"
  config.task.degradation = "poisson_noise(photons=20)"
  config.model.enhancer = denoising_enhancer()
  config.model.enhancer.num_levels = 2
  config.model.recognizer = classification_recognizer()
  config.model.recognizer.stage_sizes = (1, 1, 1)
  config.num_train_steps = 1500
  config.batch_size = 32
  config.eval_every = config.checkpoint_every = 500
  if "smoke" in options:
    shrink_for_smoke_test(config)
  return config
