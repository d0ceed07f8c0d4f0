"""IMTL-G: weights summing to 1 whose combination projects equally on every unit gradient."""
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradprom_jax import imtl_g
from gradprom_jax.core.combiners.imtl_g import impartial_weights

from combiner_battery import CHECKS, update_vectors  # noqa: E402


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__[len("check_"):])
def test_common_combiner_properties(check):
  check(imtl_g)


def run(vectors, task_weight=1.0):
  """d (float64) for g_e = vectors[0] and the task gradients vectors[1:], under jit."""
  return update_vectors(imtl_g, vectors, task_weight=task_weight)[0]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 4), weight=st.sampled_from([0.3, 4.0]))
def test_the_weights_sum_to_one_and_the_projections_are_equal(seed, n, weight):
  """Recovering α from d by least squares on the (independent) gradients g_e, λ g_t,k: Σ α = 1, and
  ⟨d, u_i⟩ is the same for every i."""
  rng = np.random.default_rng(seed)
  vectors = np.float32(rng.normal(size=(n, 8)) * rng.uniform(0.2, 5.0, size=(n, 1)))
  d = run(vectors, task_weight=weight)
  g = np.float64(vectors) * np.array([1.0] + [weight] * (n - 1))[:, None]
  alpha, *_ = np.linalg.lstsq(g.T, d, rcond=None)
  np.testing.assert_allclose(alpha @ g, d, atol=1e-5 * np.abs(g).max())
  assert abs(alpha.sum() - 1.0) < 1e-4 * np.abs(alpha).max()
  projections = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ d
  assert np.ptp(projections) <= 1e-4 * np.linalg.norm(g, axis=1).max()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_two_gradients_give_the_bisector_closed_form(seed):
  rng = np.random.default_rng(seed)
  vectors = np.float32(rng.normal(size=(2, 5)) * rng.uniform(0.2, 5.0, size=(2, 1)))
  g_e, g_t = np.float64(vectors)
  n_e, n_t = np.linalg.norm(g_e), np.linalg.norm(g_t)
  np.testing.assert_allclose(run(vectors), (n_t * g_e + n_e * g_t) / (n_e + n_t), rtol=1e-4,
                             atol=1e-5 * max(n_e, n_t))


def test_singular_systems_are_guarded():
  g_e = np.float32([2.0, 0.0, 0.0])
  # A task gradient along g_e: every α gives equal projections; the least-norm choice keeps g_e.
  np.testing.assert_allclose(run([g_e, 3 * g_e]), g_e)
  # Opposed gradients: d = 0 (both projections 0).
  np.testing.assert_allclose(run([g_e, -0.5 * g_e]), 0.0, atol=1e-6)
  # Two identical task gradients: the system is singular, the projections still equal.
  g_t = np.float32([0.0, 1.0, 0.0])
  d = run([g_e, g_t, g_t])
  assert np.isfinite(d).all()
  np.testing.assert_allclose(d @ g_e / 2.0, d @ g_t, rtol=1e-5)


def test_impartial_weights_leave_out_unusable_gradients():
  gram = jnp.array([[1.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(impartial_weights(gram, jnp.array([True, True, False])),
                             [2 / 3, 1 / 3, 0.0], rtol=1e-6)


def test_options_are_checked():
  with pytest.raises(ValueError, match="task_weight must be >= 0"):
    imtl_g(task_weight={"a": 1.0, "b": -0.5})
