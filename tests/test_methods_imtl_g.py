"""IMTL-G as a method (gradprom_jax/methods/imtl_g.py): it trains with the default config."""
import numpy as np

from test_methods import trains_a_step  # noqa: E402


def test_imtl_g_trains_both_models_and_logs_its_coefficient():
  metrics = trains_a_step("imtl_g")
  assert np.isfinite(float(metrics["gate"]))   # g_t's coefficient in d
