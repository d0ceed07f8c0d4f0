"""Joint training, PCGrad and enhancement-only: the baselines GradProm is compared with."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradprom_jax import COMBINERS, enhance_only, get_combiner, joint, pcgrad


def random_pair(seed, shapes=((3,), (2, 4))):
  rng = np.random.default_rng(seed)
  make = lambda: {f"p{i}": jnp.asarray(rng.normal(size=s), jnp.float32) for i, s in enumerate(shapes)}
  return make(), make()


def vdot(a, b):
  return sum(float(np.vdot(np.float64(x), np.float64(y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), weight=st.floats(0.0, 10.0))
def test_joint_is_exactly_the_weighted_sum(seed, weight):
  g_e, g_t = random_pair(seed)
  tx = joint(task_weight=weight)
  out, _ = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  for d, e, t in zip(jax.tree.leaves(out), jax.tree.leaves(g_e), jax.tree.leaves(g_t)):
    np.testing.assert_array_equal(d, e + jnp.float32(weight) * t)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), weight=st.floats(0.0, 10.0))
def test_pcgrad_output_never_conflicts_with_the_enhancement_gradient(seed, weight):
  g_e, g_t = random_pair(seed)
  tx = pcgrad(task_weight=weight)
  out, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  norm_sq = vdot(g_e, g_e)
  assert vdot(out, g_e) >= norm_sq - 1e-5 * (1 + norm_sq) * (1 + weight)
  if vdot(g_t, g_e) >= 0:   # no conflict: plain joint training
    assert float(state.gate) == 1.0
    for d, e, t in zip(jax.tree.leaves(out), jax.tree.leaves(g_e), jax.tree.leaves(g_t)):
      np.testing.assert_allclose(d, e + np.float32(weight) * t, rtol=1e-5, atol=1e-6)


def test_pcgrad_keeps_the_orthogonal_part_of_a_conflicting_gradient():
  g_e, g_t = jnp.array([2.0, 0.0]), jnp.array([-3.0, 1.0])
  out, state = pcgrad().update(g_e, pcgrad().init(g_e), task_grads=g_t)
  np.testing.assert_allclose(out, [2.0, 1.0])
  assert float(state.gate) == 0.0


def test_enhance_only_ignores_task_gradients():
  g_e, g_t = random_pair(3)
  tx = enhance_only()
  out, _ = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  assert out is g_e
  out, state = tx.update(g_e, tx.init(g_e))
  assert out is g_e and float(state.cosine) == 0.0


@pytest.mark.parametrize("name", sorted(COMBINERS))
def test_registry_builds_every_combiner_with_a_common_signature(name):
  g_e, g_t = random_pair(4)
  tx = get_combiner(name)
  out, state = jax.jit(tx.update)(g_e, tx.init(g_e), task_grads=g_t)
  assert jax.tree.structure(out) == jax.tree.structure(g_e)
  assert int(state.count) == 1


def test_registry_rejects_unknown_names_and_bad_options():
  with pytest.raises(ValueError, match="valid names: enhance_only, gradprom, joint, pcgrad"):
    get_combiner("mgda")
  with pytest.raises(ValueError, match="task_weight must be >= 0"):
    get_combiner("gradprom", task_weight=-1.0)
  with pytest.raises(TypeError):
    get_combiner("joint", threshold=0.1)
