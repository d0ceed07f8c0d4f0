r"""Trains and evaluates a task-driven enhancement system: the training entry point as a script.

  python experiments/main.py --config configs/default.py --workdir workdirs/default
  python experiments/main.py --help --config configs/ph2.py:classification

The same as `python -m gradprom_jax.training.main ...`, which works wherever the package is
installed; the flags, exit statuses and `--help` are documented in `gradprom_jax/training/main.py`.
"""
from gradprom_jax.training import main

if __name__ == "__main__":
  main.run()
