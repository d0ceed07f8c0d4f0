r"""Trains and evaluates a task-driven enhancement system; intentionally short.

All logic lives in `gradprom_jax.train`; this file only parses flags.

  python experiments/main.py --config configs/default.py --workdir workdirs/default
  python experiments/main.py --config configs/ph2.py:smoke --workdir /tmp/ph2 --config.method=joint

Running the same command again resumes from the workdir's newest checkpoint.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from gradprom_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file; `file.py:smoke` shrinks it to a seconds-long run.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


class _HideLibraryInfo(logging.logging.Filter):
  """Keeps our INFO lines but drops the chatty INFO of orbax and TFDS (their warnings still show)."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or not any(
        name in record.pathname for name in ("/orbax/", "/tensorflow_datasets/", "/grain/"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_HideLibraryInfo())
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
