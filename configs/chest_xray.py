r"""Chest X-Ray Pneumonia (Kermany et al. 2018; manual download `chest_xray/{train,val,test}/...`):
low-dose (Poisson) denoising + normal/pneumonia classification, grayscale 128×128.

  python experiments/main.py --config configs/chest_xray.py --config.data.manual_dir=/data \
      --workdir workdirs/chest_xray
"""
from gradprom_jax.configuration.config import (base_config, classification_recognizer,
                                               denoising_enhancer, parse_config_args,
                                               shrink_for_smoke_test)


def get_config(arg: str | None = None):
  options = parse_config_args(arg, ("smoke",))
  config = base_config()
  config.data.name = "chest_xray"
  config.data.image_size = (128, 128)
  config.data.patch_size = None
  config.task.recognition = "classification"
  config.task.degradation = "poisson_noise(photons=50)"
  config.model.enhancer = denoising_enhancer()
  config.model.recognizer = classification_recognizer()
  config.num_train_steps = 10000
  config.batch_size = 32
  config.eval_every = config.checkpoint_every = 1000
  if "smoke" in options:
    shrink_for_smoke_test(config)
  return config
