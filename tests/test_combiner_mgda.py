"""MGDA: the minimum-norm point of the gradients' convex hull, checked against brute force."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradprom_jax import mgda
from gradprom_jax.core.combiners.mgda import MAX_TASKS, min_norm_weights

from combiner_battery import CHECKS, update_vectors  # noqa: E402


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__[len("check_"):])
def test_common_combiner_properties(check):
  check(mgda)


def run(vectors, task_weight=1.0):
  """(d, α) for g_e = vectors[0] and the task gradients vectors[1:] (float32 vectors)."""
  d, state = update_vectors(mgda, vectors, task_weight=task_weight)
  task_alpha = np.array([float(s.gate) for s in state.tasks]) / task_weight
  return d, np.concatenate([[1.0 - task_alpha.sum()], task_alpha])


def simplex_grid(n, steps):
  """Every point of the n-simplex whose coordinates are multiples of 1/steps, as (m, n) float64."""
  points = [c for c in itertools.product(range(steps + 1), repeat=n - 1) if sum(c) <= steps]
  points = np.array([list(c) + [steps - sum(c)] for c in points], np.float64)
  return points / steps


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 3), dim=st.sampled_from([2, 5]))
def test_the_update_is_the_minimum_norm_point_of_the_hull(seed, n, dim):
  """In the hull, ⟨d, g_i⟩ ≥ ‖d‖² for every i (the optimality condition), and no point of a fine grid
  over the simplex is shorter."""
  rng = np.random.default_rng(seed)
  vectors = np.float32(rng.normal(size=(n, dim)) * rng.uniform(0.1, 10.0, size=(n, 1)))
  d, alpha = run(vectors)
  g = np.float64(vectors)
  scale = np.max(np.sum(g * g, axis=1))
  assert np.all(alpha >= -1e-6)
  np.testing.assert_allclose(d, alpha @ g, atol=1e-5 * np.sqrt(scale))
  assert np.all(g @ d >= d @ d - 1e-5 * scale)
  grid = simplex_grid(n, 300 if n == 2 else 60)
  assert np.linalg.norm(d) <= np.min(np.linalg.norm(grid @ g, axis=1)) + 1e-5 * np.sqrt(scale)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dim=st.sampled_from([2, 5]))
def test_two_gradients_give_the_closed_form(seed, dim):
  rng = np.random.default_rng(seed)
  vectors = np.float32(rng.normal(size=(2, dim)))
  g_e, g_t = np.float64(vectors)
  alpha = np.clip((g_t - g_e) @ g_t / np.sum((g_e - g_t) ** 2), 0.0, 1.0)
  np.testing.assert_allclose(run(vectors)[0], alpha * g_e + (1 - alpha) * g_t, rtol=1e-4, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 5), dim=st.sampled_from([2, 7]))
def test_the_face_enumeration_is_exact_for_more_gradients(seed, n, dim):
  """K + 1 = 4 or 5 gradients, also more than the dimension (0 may be in the hull): the optimality
  conditions hold to float32 rounding."""
  rng = np.random.default_rng(seed)
  vectors = np.float32(rng.normal(size=(n, dim)))
  d, alpha = run(vectors)
  g = np.float64(vectors)
  scale = np.max(np.sum(g * g, axis=1))
  assert np.all(alpha >= -1e-6) and abs(alpha.sum() - 1) < 1e-6
  np.testing.assert_allclose(d, alpha @ g, atol=1e-5 * np.sqrt(scale))
  assert np.all(g @ d >= d @ d - 1e-5 * scale)


def test_parallel_and_opposed_gradients():
  g_e = np.float32([2.0, 0.0])
  # A longer gradient along g_e: the hull's nearest point is g_e itself.
  np.testing.assert_allclose(run([g_e, 3 * g_e])[0], g_e)
  # A shorter one: the task gradient.
  np.testing.assert_allclose(run([g_e, 0.5 * g_e])[0], 0.5 * g_e)
  # Opposed: 0 is in the hull (Pareto-stationary), d = 0.
  np.testing.assert_allclose(run([g_e, -g_e])[0], [0.0, 0.0], atol=1e-7)
  # Duplicated gradients (a singular face) still give the exact point.
  np.testing.assert_allclose(run([g_e, np.float32([0.0, 2.0]), np.float32([0.0, 2.0])])[0],
                             [1.0, 1.0], rtol=1e-6)


def test_min_norm_weights_leave_out_unusable_gradients():
  gram = jnp.array([[1.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(min_norm_weights(gram, jnp.array([True, True, False])), [0.8, 0.2, 0.0],
                             rtol=1e-6)


def test_options_are_checked():
  with pytest.raises(ValueError, match="task_weight must be >= 0"):
    mgda(task_weight=-1.0)
  with pytest.raises(ValueError, match=f"more than the {MAX_TASKS} it enumerates"):
    mgda(tasks=MAX_TASKS + 1)
