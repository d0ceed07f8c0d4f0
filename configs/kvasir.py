r"""Kvasir-SEG polyps (manual download: `Kvasir-SEG/images`, `Kvasir-SEG/masks`), ×4 SR + segmentation.

  python experiments/main.py --config configs/kvasir.py --config.data.manual_dir=/data/kvasir \
      --workdir workdirs/kvasir
  python experiments/main.py --config configs/kvasir.py:smoke --config.data.manual_dir=... --workdir /tmp/k
"""
from gradprom_jax.configuration.config import base_config, parse_config_args, shrink_for_smoke_test


def get_config(arg: str | None = None):
  options = parse_config_args(arg, ("smoke",))
  config = base_config()
  config.data.name = "kvasir_seg"
  config.data.image_size = (192, 256)
  config.data.patch_size = (96, 128)
  config.num_train_steps = 10000
  config.batch_size = 16
  config.eval_every = config.checkpoint_every = 1000
  if "smoke" in options:
    shrink_for_smoke_test(config)
  return config
