"""MGDA as a method (gradprom_jax/methods/mgda.py): it trains with the default config."""
from test_methods import trains_a_step  # noqa: E402


def test_mgda_trains_both_models_and_logs_its_coefficient():
  metrics = trains_a_step("mgda")
  assert 0.0 <= float(metrics["gate"]) <= 1.0   # α_t·λ: g_t's coefficient in the hull point
