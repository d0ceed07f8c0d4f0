"""CAGrad: the best worst-case improvement in a ball around the mean gradient, checked by brute force."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradprom_jax import cagrad
from gradprom_jax.core.combiners.cagrad import segment_minimum

from combiner_battery import (CHECKS, assert_trees_equal, gradients, update_once,  # noqa: E402
                              update_vectors)
from test_combiner_mgda import simplex_grid  # noqa: E402


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__[len("check_"):])
def test_common_combiner_properties(check):
  check(cagrad)


def worst_improvement(g, d):
  """min_i ⟨g_i, d⟩ for the rows g_i of ``g``, for one d or each row of a (m, dim) array."""
  return np.min(d @ g.T, axis=-1)


def dual(g, w, c):
  """The dual objective ⟨g_w, g₀⟩ + c‖g₀‖‖g_w‖ at each row w (weak duality: ≥ the primal optimum)."""
  g0 = g.mean(axis=0)
  g_w = w @ g
  return g_w @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(g_w, axis=-1)


def random_vectors(seed, n, dim):
  rng = np.random.default_rng(seed)
  return np.float32(rng.normal(size=(n, dim)) * rng.uniform(0.2, 5.0, size=(n, 1)))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 3), dim=st.just(4),
       c=st.sampled_from([0.4, 2.0]))
def test_the_update_is_the_best_point_of_the_ball(seed, n, dim, c):
  """d is in the ball, no sampled point of the ball improves the worst gradient more, and its value
  meets the dual's minimum over a fine grid of the simplex (the duality gap closes). Gradients as many
  as the dimensions or fewer, so linearly independent (see the module on the degenerate case)."""
  vectors = random_vectors(seed, n, dim)
  g = np.float64(vectors)
  d, _ = update_vectors(cagrad, vectors, c=c)
  g0 = g.mean(axis=0)
  radius = c * np.linalg.norm(g0)
  scale = np.max(np.linalg.norm(g, axis=1)) ** 2
  assert np.linalg.norm(d - g0) <= radius * (1 + 1e-4) + 1e-6
  rng = np.random.default_rng(seed + 1)
  directions = rng.normal(size=(4000, dim))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  samples = g0 + radius * directions * rng.uniform(size=(4000, 1)) ** (1 / dim)
  samples[:2000] = g0 + radius * directions[:2000]   # half on the boundary, where the optimum is
  value = worst_improvement(g, d)
  assert value >= np.max(worst_improvement(g, samples)) - 1e-5 * scale
  grid_minimum = np.min(dual(g, simplex_grid(n, 400 if n == 2 else 80), c))
  assert value <= grid_minimum + 1e-5 * scale   # weak duality
  assert grid_minimum - value <= 2e-3 * scale   # the gap closes, to the grid's resolution


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 5))
def test_the_pairwise_solver_is_accurate_for_more_gradients(seed, n):
  """For 4–5 gradients, the primal value of d matches the dual minimum found by SciPy's SLSQP from
  several starts, in float64."""
  optimize = pytest.importorskip("scipy.optimize")
  vectors = random_vectors(seed, n, 7)
  g = np.float64(vectors)
  d, _ = update_vectors(cagrad, vectors, c=0.4)
  rng = np.random.default_rng(seed)
  best = min((optimize.minimize(lambda w: dual(g, w, 0.4), rng.dirichlet(np.ones(n)), method="SLSQP",
                                bounds=[(0, 1)] * n, options=dict(ftol=1e-14, maxiter=500),
                                constraints={"type": "eq", "fun": lambda w: w.sum() - 1.0})
              for _ in range(4)), key=lambda result: result.fun)
  scale = np.max(np.linalg.norm(g, axis=1)) ** 2
  assert abs(worst_improvement(g, d) - best.fun) <= 1e-5 * scale


def test_c_zero_gives_the_mean_and_rescale_divides_by_one_plus_c_squared():
  g_e, g_t = gradients(0, 2)
  out, _ = update_once(cagrad(c=0.0, tasks=2), g_e, g_t)
  for d, e, a, b in zip(*(jax.tree.leaves(t) for t in (out, g_e, *g_t))):
    np.testing.assert_allclose(d, (e + a + b) / 3, rtol=1e-5, atol=1e-6)
  for c in (0.4, 1.5):
    plain, _ = update_once(cagrad(c=c, tasks=2), g_e, g_t)
    rescaled, _ = update_once(cagrad(c=c, rescale=True, tasks=2), g_e, g_t)
    for x, y in zip(jax.tree.leaves(plain), jax.tree.leaves(rescaled)):
      np.testing.assert_allclose(y, x / (1 + c * c), rtol=1e-6, atol=1e-7)


def test_a_zero_task_weight_is_not_the_limit_of_small_weights():
  """λ = 0 leaves the task out (d = g_e, as for every combiner here), but CAGrad's mean makes small λ
  far from g_e: d → g_e/2 + (c/2)‖g_e‖ ĝ_t as λ → 0."""
  g_e, g_t = gradients(1)
  assert_trees_equal(update_once(cagrad(task_weight=0.0), g_e, g_t)[0], g_e)
  small, _ = update_once(cagrad(task_weight=1e-4, c=0.4), g_e, g_t)
  e, t = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]) for tree in (g_e, g_t))
  limit = e / 2 + 0.2 * np.linalg.norm(e) * t / np.linalg.norm(t)
  np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in jax.tree.leaves(small)]), limit,
                             rtol=1e-3, atol=1e-3)


@settings(max_examples=200, deadline=None)
@given(slope=st.floats(-3, 3), weight=st.floats(0, 3), a=st.just(0.0) | st.floats(1e-3, 4),
       b=st.floats(-2, 2),
       extra=st.floats(0, 2), low=st.floats(-1, 0), width=st.floats(0, 2))
def test_segment_minimum_beats_a_grid(slope, weight, a, b, extra, low, width):
  q = b * b / a + extra if a > 0 else extra   # keeps a t² + 2bt + q ≥ 0
  b = b if a > 0 else 0.0
  f = lambda t: slope * t + weight * np.sqrt(np.maximum(a * t * t + 2 * b * t + q, 0.0))
  t = float(segment_minimum(slope, weight, a, b, q, low, low + width))
  assert low - 1e-6 <= t <= low + width + 1e-6
  grid = np.linspace(low, low + width, 2001)
  assert f(t) <= np.min(f(grid)) + 1e-4 * (1 + abs(np.min(f(grid))))


def test_the_degenerate_case_gives_the_mean_not_nan():
  """Exactly opposed gradients (0 in the hull): g_w* = 0, and d = g₀ (here 0) rather than noise."""
  g_e, g_t = gradients(2)
  out, state = update_once(cagrad(c=2.0), g_e, jax.tree.map(jnp.negative, g_e))
  for x in jax.tree.leaves((out, state)):
    assert np.isfinite(x).all()
  np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in jax.tree.leaves(out)]), 0.0,
                             atol=1e-6)


def test_options_are_checked():
  with pytest.raises(ValueError, match="c must be >= 0"):
    cagrad(c=-0.1)
  with pytest.raises(ValueError, match="task_weight must be >= 0"):
    cagrad(task_weight=(1.0, -1.0))
