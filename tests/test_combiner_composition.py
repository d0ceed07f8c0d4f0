"""GradProm composes with optax like optax's own transformations: chain, partition, inject, jit, sharding."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gradprom_jax import find_combiner_state, gradprom


def test_chains_with_clipping_and_adamw():
  params = {"w": jnp.ones((4,)), "b": jnp.zeros(())}
  g_e = {"w": jnp.array([1.0, 0.0, 0.0, 0.0]), "b": jnp.array(1.0)}
  g_t = {"w": jnp.array([5.0, 5.0, 0.0, 0.0]), "b": jnp.array(5.0)}
  tx = optax.chain(gradprom(), optax.clip_by_global_norm(1.0), optax.adamw(1e-1))
  state = tx.init(params)
  updates, state = tx.update(g_e, state, params, task_grads=g_t)
  new_params = optax.apply_updates(params, updates)
  # Gate open, so entry 1 (only in g_t) moved; adam's first step is -lr·sign(g) plus decay.
  assert float(new_params["w"][1]) < 1.0 - 0.05
  assert int(find_combiner_state(state).promoted) == 1


def test_partition_sees_only_the_enhancer_leaves():
  """A case where the whole-tree cosine and the enhancer-only cosine have opposite signs."""
  params = {"enhancer": {"w": jnp.zeros(2)}, "recognizer": {"w": jnp.zeros(2)}}
  g_e = {"enhancer": {"w": jnp.array([1.0, 0.0])}, "recognizer": {"w": jnp.array([10.0, 0.0])}}
  g_t = {"enhancer": {"w": jnp.array([-1.0, 0.0])}, "recognizer": {"w": jnp.array([10.0, 0.0])}}
  whole_tree = gradprom()
  _, whole_state = whole_tree.update(g_e, whole_tree.init(params), task_grads=g_t)
  assert float(whole_state.cosine) > 0   # dominated by the recogniser's leaves

  labels = {"enhancer": {"w": "enhancer"}, "recognizer": {"w": "recognizer"}}
  tx = optax.partition({"enhancer": gradprom(), "recognizer": optax.identity()}, labels,
                       mask_compatible_extra_args=True)
  updates, state = tx.update(g_e, tx.init(params), params, task_grads=g_t)
  np.testing.assert_array_equal(updates["enhancer"]["w"], g_e["enhancer"]["w"])  # gate closed
  np.testing.assert_array_equal(updates["recognizer"]["w"], g_e["recognizer"]["w"])
  inner = find_combiner_state(state)
  assert float(inner.cosine) == pytest.approx(-1.0) and float(inner.gate) == 0.0


def test_inject_hyperparams_threshold_and_task_weight():
  params = jnp.zeros(2)
  g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])   # cos ≈ 0.707
  tx = optax.inject_hyperparams(gradprom, static_args=("granularity", "mode"))(
      threshold=0.5, task_weight=2.0)
  state = tx.init(params)
  out, state = tx.update(g_e, state, params, task_grads=g_t)
  np.testing.assert_allclose(out, g_e + 2.0 * g_t)
  state.hyperparams["threshold"] = jnp.asarray(0.9)
  out, _ = jax.jit(tx.update)(g_e, state, params, task_grads=g_t)
  np.testing.assert_allclose(out, g_e)


@pytest.mark.parametrize("granularity", ["global", "per_leaf"])
def test_sharded_over_a_4_device_mesh_equals_unsharded(granularity):
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",),
              axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  g_e = {"a": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(16,)), jnp.float32)}
  g_t = jax.tree.map(lambda x: x + jnp.asarray(rng.normal(size=x.shape), jnp.float32), g_e)
  tx = gradprom(granularity=granularity, mode="soft")
  expected, expected_state = tx.update(g_e, tx.init(g_e), task_grads=g_t)

  shard = NamedSharding(mesh, P("data"))
  put = lambda tree: jax.tree.map(lambda x: jax.device_put(x, shard), tree)
  out, state = jax.jit(tx.update)(put(g_e), tx.init(g_e), task_grads=put(g_t))
  assert out["a"].sharding.is_equivalent_to(shard, 2)
  for a, b in zip(jax.tree.leaves((out, state)), jax.tree.leaves((expected, expected_state))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_toy_conflict_gradprom_reaches_the_main_minimum_joint_does_not():
  """Main loss ‖x − a‖², auxiliary loss ‖x − b‖²: joint training settles between a and b."""
  a, b = jnp.array([1.0, -2.0, 0.5]), jnp.array([-3.0, 1.0, 2.0])
  main_loss = lambda x: jnp.sum((x - a) ** 2)
  aux_loss = lambda x: jnp.sum((x - b) ** 2)

  def optimise(combiner):
    tx = optax.chain(combiner, optax.sgd(0.05))
    x, state = jnp.array([4.0, 4.0, -4.0]), tx.init(jnp.zeros(3))

    def step(carry, _):
      x, state = carry
      updates, state = tx.update(jax.grad(main_loss)(x), state, x, task_grads=jax.grad(aux_loss)(x))
      return (optax.apply_updates(x, updates), state), None

    (x, state), _ = jax.lax.scan(step, (x, state), None, length=500)
    return x, find_combiner_state(state)

  from gradprom_jax import joint
  x_gradprom, state = optimise(gradprom())
  x_joint, _ = optimise(joint())
  assert float(jnp.linalg.norm(x_gradprom - a)) < 1e-3
  assert float(jnp.linalg.norm(x_joint - a)) > 1.0
  np.testing.assert_allclose(x_joint, (a + b) / 2, atol=1e-3)
  # The task gradient helped early (gate open), then was refused near the main minimum.
  assert 0 < int(state.promoted) < int(state.count)


def test_inject_hyperparams_with_a_static_cosine_average():
  from gradprom_jax.core.combiners import GradPromEmaState
  params = jnp.zeros(2)
  g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])
  tx = optax.inject_hyperparams(gradprom, static_args=("cosine_ema",))(cosine_ema=0.9, threshold=0.5)
  state = tx.init(params)
  assert isinstance(state.inner_state, GradPromEmaState)
  out, state = jax.jit(tx.update)(g_e, state, params, task_grads=g_t)
  np.testing.assert_allclose(out, g_e + g_t)
  assert int(find_combiner_state(state).count) == 1
  with pytest.raises(ValueError, match="list it in static_args"):
    optax.inject_hyperparams(gradprom)(cosine_ema=0.9).init(params)
