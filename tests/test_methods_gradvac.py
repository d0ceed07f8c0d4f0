"""GradVac as a method (gradprom_jax/methods/gradvac.py): its rate is checked, and it trains."""
from test_methods import refusal, trains_a_step  # noqa: E402


def test_gradvac_refuses_a_rate_outside_the_unit_interval():
  assert refusal("gradvac", {"gradvac.beta": 1.5}) == "gradvac.beta=1.5 must be in [0, 1]."


def test_gradvac_trains_both_models_with_the_default_config():
  trains_a_step("gradvac")
