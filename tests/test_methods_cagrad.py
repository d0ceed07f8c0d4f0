"""CAGrad as a method (gradprom_jax/methods/cagrad.py): its options are checked, and it trains."""
from test_methods import refusal, trains_a_step  # noqa: E402


def test_cagrad_refuses_a_negative_radius():
  assert refusal("cagrad", {"cagrad.c": -0.1}).startswith("cagrad.c=-0.1 must be a number >= 0")


def test_cagrad_trains_both_models_with_the_default_config():
  trains_a_step("cagrad")
