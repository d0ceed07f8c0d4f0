"""A control for GradProm's gate: λ g_t added on a random fraction of steps, whatever the cosine."""
import ml_collections

from gradprom_jax.core.combiners.baselines import random_gate
from gradprom_jax.methods.method import Method, check_fraction


def options() -> ml_collections.ConfigDict:
  """``config.random_gate``."""
  config = ml_collections.ConfigDict()
  # The gate opens on a random `open_rate` fraction of steps, whatever the cosine; set it to a
  # GradProm run's logged gate_open_rate to test whether the cosine's choice of steps matters. The
  # coins are seeded by `seed`.
  config.open_rate = 0.5
  return config


def check(options: ml_collections.ConfigDict) -> None:
  check_fraction("random_gate.open_rate", options.open_rate)


METHOD = Method(
    "random_gate", "g_e + λ g_t on a random open_rate fraction of steps (a control for the gate)",
    random_gate, "separate", options=options, shared_options=("task_weight", "seed"), check=check)
