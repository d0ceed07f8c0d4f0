"""Checks a config before anything is built or compiled, with one-line errors that say what to fix."""
from __future__ import annotations

import ml_collections

from gradprom_jax import config as config_lib
from gradprom_jax import degradations
from gradprom_jax.combiners.gradient_geometry import GRANULARITIES
from gradprom_jax.combiners.gradprom import GATE_MODES


class ConfigError(ValueError):
  """A config that cannot run; the message names the key and the valid values."""


def _choice(name: str, value, valid) -> None:
  if value not in valid:
    raise ConfigError(f"{name}={value!r} is not one of {', '.join(map(str, valid))}.")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> None:
  """Raises :class:`ConfigError` if ``config`` cannot run on ``num_devices`` devices.

  >>> from gradprom_jax.config import base_config
  >>> config = base_config()
  >>> validate_config(config, num_devices=4)
  >>> config.batch_size = 6
  >>> validate_config(config, num_devices=4)
  Traceback (most recent call last):
  ...
  gradprom_jax.config_validation.ConfigError: batch_size=6 is not divisible by the number of devices (4).
  """
  _choice("method", config.method, config_lib.METHODS)
  _choice("task.recognition", config.task.recognition, config_lib.RECOGNITION_TASKS)
  _choice("parallel", config.parallel, config_lib.PARALLEL_MODES)
  _choice("recognizer.train_on", config.recognizer.train_on, config_lib.RECOGNIZER_INPUTS)
  _choice("gradprom.granularity", config.gradprom.granularity, GRANULARITIES)
  _choice("gradprom.mode", config.gradprom.mode, GATE_MODES)
  for key in ("num_train_steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints", "max_nonfinite_steps"):
    if not isinstance(config[key], int) or config[key] < 1:
      raise ConfigError(f"{key}={config[key]!r} must be a positive integer.")
  if config.batch_size % num_devices:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the number of devices "
                      f"({num_devices}).")
  if not 0 <= config.recognizer.pretrain_steps < config.num_train_steps:
    raise ConfigError(f"recognizer.pretrain_steps={config.recognizer.pretrain_steps} must be in "
                      f"[0, num_train_steps={config.num_train_steps}).")
  if config.task_weight < 0:
    raise ConfigError(f"task_weight={config.task_weight} must be >= 0.")
  try:
    degradation = degradations.parse_degradation(config.task.degradation)
  except ValueError as e:
    raise ConfigError(f"task.degradation={config.task.degradation!r}: {e}") from None
  for key in ("image_size", "patch_size"):
    size = config.data.get(key)
    if size is not None:
      try:
        degradation.check_image_size(*size)
      except ValueError as e:
        raise ConfigError(f"data.{key}={tuple(size)}: {e}") from None
