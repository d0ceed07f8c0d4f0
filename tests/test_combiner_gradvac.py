"""Gradient Vaccine: the task gradient's cosine with g_e lifted to an EMA target before it is added."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradprom_jax import GradVacState, gradvac, pcgrad
from gradprom_jax.core.combiners import find_combiner_metrics, find_combiner_state
from gradprom_jax.core.combiners.gradvac import vaccinated_coefficient

from combiner_battery import CHECKS, assert_trees_close, gradients, update_once  # noqa: E402
from combiner_trees import vdot  # noqa: E402


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__[len("check_"):])
def test_common_combiner_properties(check):
  check(gradvac)


# Built and jitted once per option, so each property example reuses one compilation.
UPDATE_WITH_WEIGHT = {weight: jax.jit(gradvac(task_weight=weight).update) for weight in (0.5, 1.0, 3.0)}
UPDATE_WITH_BETA = {beta: jax.jit(gradvac(beta=beta).update) for beta in (0.01, 0.3, 1.0)}


def cosine(a, b):
  return vdot(a, b) / np.sqrt(vdot(a, a) * vdot(b, b))


def correlated(seed, correlation):
  """(g_e, g_t) trees whose cosine is spread over [-1, 1] as ``correlation`` is."""
  g_e, noise = gradients(seed)
  return g_e, jax.tree.map(lambda e, n: correlation * 2.0 * e + (1 - abs(correlation)) * n, g_e, noise)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), correlation=st.floats(-0.95, 0.95),
       target=st.floats(-0.9, 0.95), weight=st.sampled_from([0.5, 1.0, 3.0]))
def test_a_cosine_below_the_target_is_lifted_to_it_and_one_above_is_kept(seed, correlation, target,
                                                                         weight):
  g_e, g_t = correlated(seed, correlation)
  state = gradvac().init(g_e)._replace(target_cosine=jnp.float32(target))
  d, new_state = UPDATE_WITH_WEIGHT[weight](g_e, state, task_grads=g_t)
  vaccinated = jax.tree.map(lambda x, e: (np.float64(x) - np.float64(e)) / weight, d, g_e)
  phi = cosine(g_e, g_t)
  if phi < target - 1e-6:
    assert cosine(g_e, vaccinated) == pytest.approx(target, abs=2e-4)
    assert float(new_state.combiner.gate) == 0.0
  elif phi > target + 1e-6:
    assert_trees_close(vaccinated, g_t, rtol=1e-4, atol=1e-5)
    assert float(new_state.combiner.gate) == 1.0
  assert float(new_state.target_cosine) == pytest.approx(0.99 * target + 0.01 * phi, abs=1e-6)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), beta=st.sampled_from([0.01, 0.3, 1.0]))
def test_the_target_follows_the_moving_average_of_the_cosines(seed, beta):
  update = UPDATE_WITH_BETA[beta]
  g_e, _ = gradients(seed)
  state, expected = gradvac().init(g_e), 0.0
  rng = np.random.default_rng(seed)
  for step in range(6):
    g_e, g_t = correlated(seed + step, float(rng.uniform(-0.9, 0.9)))
    _, state = update(g_e, state, task_grads=g_t)
    expected = (1 - beta) * expected + beta * cosine(g_e, g_t)
    assert float(state.target_cosine) == pytest.approx(expected, abs=1e-5)
  assert int(find_combiner_state(state).count) == 6
  assert float(find_combiner_metrics(state)["target_cosine"]) == float(state.target_cosine)


def test_with_the_initial_target_it_is_pcgrad():
  for seed in range(4):
    g_e, g_t = correlated(seed, -0.5)
    assert_trees_close(update_once(gradvac(), g_e, g_t)[0], update_once(pcgrad(), g_e, g_t)[0],
                       rtol=1e-5, atol=1e-6)


def test_an_undefined_cosine_adjusts_nothing_and_keeps_the_target():
  g_e, g_t = gradients(1)
  state = gradvac().init(g_e)._replace(target_cosine=jnp.float32(0.5))
  zero_e = jax.tree.map(jnp.zeros_like, g_e)
  d, new_state = gradvac().update(zero_e, state, task_grads=g_t)   # g_e = 0: plain g_e + λ g_t
  assert_trees_close(d, g_t)
  assert float(new_state.target_cosine) == 0.5
  nan_t = jax.tree.map(lambda x: x * jnp.nan, g_t)
  d, new_state = gradvac().update(g_e, state, task_grads=nan_t)
  assert_trees_close(d, g_e)
  assert float(new_state.target_cosine) == 0.5 and float(new_state.combiner.gate) == 0.0


def test_each_task_is_vaccinated_towards_g_e_with_its_own_target():
  g_e, (a, b) = gradients(2, 2)
  tx = gradvac(task_weight={"masks": 1.0, "diagnosis": 0.5}, beta={"masks": 0.1, "diagnosis": 0.2})
  state = tx.init(g_e)
  state = state._replace(tasks={"masks": state.tasks["masks"]._replace(target_cosine=jnp.float32(0.6)),
                                "diagnosis": state.tasks["diagnosis"]})
  d, new_state = tx.update(g_e, state, task_grads={"masks": a, "diagnosis": b})
  assert isinstance(new_state.tasks["masks"], GradVacState)
  single = lambda weight, beta, target, g_t: gradvac(task_weight=weight, beta=beta).update(
      g_e, gradvac().init(g_e)._replace(target_cosine=jnp.float32(target)), task_grads=g_t)
  d_masks, s_masks = single(1.0, 0.1, 0.6, a)
  d_diagnosis, s_diagnosis = single(0.5, 0.2, 0.0, b)
  expected = jax.tree.map(lambda e, x, y: x + y - e, g_e, d_masks, d_diagnosis)
  assert_trees_close(d, expected)
  assert float(new_state.tasks["masks"].target_cosine) == pytest.approx(float(s_masks.target_cosine))
  assert float(new_state.tasks["diagnosis"].target_cosine) == pytest.approx(
      float(s_diagnosis.target_cosine))


def test_vaccinated_coefficient_is_finite_at_a_target_of_one():
  coefficient = vaccinated_coefficient(jnp.float32(0.2), jnp.float32(1.0), jnp.float32(1.0))
  assert np.isfinite(float(coefficient)) and float(coefficient) > 0


def test_options_are_checked():
  with pytest.raises(ValueError, match=r"beta must be in \[0, 1\], got 1.5"):
    gradvac(beta=1.5)
  with pytest.raises(ValueError, match="task_weight must be >= 0"):
    gradvac(task_weight=-0.1)
