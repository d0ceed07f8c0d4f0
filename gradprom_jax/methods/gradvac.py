"""Gradient Vaccine (Wang et al. 2021): g_t lifted to a moving cosine target with g_e, then λ g_t added."""
import ml_collections

from gradprom_jax.core.combiners.gradvac import gradvac
from gradprom_jax.methods.method import Method, check_fraction


def options() -> ml_collections.ConfigDict:
  """``config.gradvac`` (see :func:`gradprom_jax.core.combiners.gradvac`)."""
  config = ml_collections.ConfigDict()
  # β: the rate of the moving average that sets the cosine target φ̂ (the paper's 0.01).
  config.beta = 0.01
  return config


def check(options: ml_collections.ConfigDict) -> None:
  check_fraction("gradvac.beta", options.beta)


METHOD = Method("gradvac", "g_e + λ g_t', g_t lifted towards g_e until their cosine reaches a "
                "moving target (Gradient Vaccine, Wang et al. 2021)", gradvac, "separate",
                options=options, check=check)
