"""Properties every multi-gradient combiner (mgda, cagrad, imtl_g, gradvac) must have, whatever its rule.

Each ``check_*`` takes the combiner's factory (called with ``task_weight=`` and ``tasks=``) and raises
on failure; a test file runs them all with ``@pytest.mark.parametrize("check", CHECKS)``.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gradprom_jax.core.combiners import find_combiner_metrics

from combiner_trees import random_tree, update_thrice_under_jit, vdot  # noqa: E402

SHAPES = [(3,), (2, 4), (5,)]


def gradients(seed, tasks=1, scale=1.0):
  """(g_e, task gradients) as trees of SHAPES: one tree for ``tasks=1``, else a tuple."""
  rng = np.random.default_rng(seed)
  g_e = random_tree(rng, SHAPES, scale)
  g_t = tuple(random_tree(rng, SHAPES, scale) for _ in range(tasks))
  return g_e, (g_t[0] if tasks == 1 else g_t)


def update_once(tx, g_e, g_t):
  return tx.update(g_e, tx.init(g_e), task_grads=g_t)


@functools.lru_cache(maxsize=None)
def _built_and_jitted(make, tasks, options):
  tx = make(tasks=tasks, **dict(options))
  return tx, jax.jit(tx.update)


def update_vectors(make, vectors, **options):
  """(d as float64, state) of ``make(tasks=K, **options)`` for g_e = vectors[0] and the K task gradients
  vectors[1:], under jit; built and compiled once per (K, options, shape), so property tests that
  draw from a few shapes compile a few times only."""
  tx, update = _built_and_jitted(make, len(vectors) - 1, tuple(sorted(options.items())))
  g_e = jnp.asarray(vectors[0])
  d, state = update(g_e, tx.init(g_e), task_grads=tuple(jnp.asarray(v) for v in vectors[1:]))
  return np.float64(d), state


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.float32(x), np.float32(y), rtol=rtol, atol=atol)


def flat(tree):
  return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def check_jit_matches_eager_and_keeps_the_state_shape(make):
  for tasks in (1, 3):
    g_e, g_t = gradients(0, tasks)
    tx = make(tasks=None if tasks == 1 else tasks)
    assert_trees_close(jax.jit(tx.update)(g_e, tx.init(g_e), task_grads=g_t),
                       update_once(tx, g_e, g_t))
    update_thrice_under_jit(tx, g_e, g_t)


def check_a_tree_gives_the_same_as_its_flattened_vector(make):
  for tasks in (1, 2):
    g_e, g_t = gradients(1, tasks)
    tx = make(tasks=None if tasks == 1 else tasks)
    out, state = update_once(tx, g_e, g_t)
    flat_t = flat(g_t) if tasks == 1 else tuple(flat(t) for t in g_t)
    flat_out, flat_state = update_once(tx, flat(g_e), flat_t)
    np.testing.assert_allclose(flat(out), flat_out, rtol=1e-5, atol=1e-6)
    assert_trees_close(state, flat_state)


def check_bfloat16_gradients_keep_their_dtype(make):
  g_e, g_t = gradients(2, 2)
  as_bf16 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)
  as_f32 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.float32), tree)
  tx = make(tasks=2)
  out, _ = update_once(tx, as_bf16(g_e), as_bf16(g_t))
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(out))
  # The same inputs upcast give the same update, to bfloat16's rounding of the output.
  expected, _ = update_once(tx, as_f32(as_bf16(g_e)), as_f32(as_bf16(g_t)))
  assert_trees_close(out, expected, rtol=2e-2, atol=2e-2)


def check_zero_tiny_and_non_finite_task_gradients_give_g_e(make):
  g_e, g_t = gradients(3)
  nan = jax.tree.map(lambda x: x.at[0].set(jnp.nan), g_t)
  inf = jax.tree.map(lambda x: x.at[-1].set(jnp.inf), g_t)
  for bad in (jax.tree.map(jnp.zeros_like, g_t), nan, inf):
    out, state = update_once(make(), g_e, bad)
    assert_trees_equal(out, g_e)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))
  # A task gradient 1e-30 of g_e's (its squares underflow next to g_e's) is negligible, never NaN.
  out, _ = update_once(make(), g_e, jax.tree.map(lambda x: x * 1e-30, g_t))
  assert_trees_close(out, g_e, rtol=1e-6, atol=0)
  # A non-finite task among several is left out: the update of the others alone.
  g_e, (first, second) = gradients(4, 2)
  without, _ = update_once(make(), g_e, first)
  with_nan, _ = update_once(make(tasks=2), g_e, (first, jax.tree.map(lambda x: x * jnp.nan, second)))
  assert_trees_close(with_nan, without)


def check_updates_scale_with_the_gradients(make):
  """Gradients of 1e-30 or 1e25 (whose squares under- or overflow float32) give the same update,
  scaled: every rule here is positively homogeneous."""
  g_e, g_t = gradients(5, 2)
  tx = make(tasks=2)
  reference, _ = update_once(tx, g_e, g_t)
  for scale in (1e-30, 1e25):
    scaled = lambda tree: jax.tree.map(lambda x: x * np.float32(scale), tree)
    out, _ = update_once(tx, scaled(g_e), scaled(g_t))
    assert_trees_close(jax.tree.map(lambda x: x / np.float32(scale), out), reference,
                       rtol=1e-4, atol=1e-5)


def check_tuple_and_dict_forms_agree(make):
  g_e, (a, b) = gradients(6, 2)
  by_number = make(task_weight=(1.0, 0.5))
  by_name = make(task_weight={"x": 1.0, "y": 0.5})
  out_number, state_number = update_once(by_number, g_e, (a, b))
  out_name, state_name = update_once(by_name, g_e, {"x": a, "y": b})
  assert_trees_equal(out_number, out_name)
  assert_trees_equal(state_number.tasks, tuple(state_name.tasks[k] for k in ("x", "y")))
  # One task in a tuple is the single-tree form.
  assert_trees_equal(update_once(make(tasks=1), g_e, (a,))[0], update_once(make(), g_e, a)[0])


def check_zero_task_weight_gives_g_e(make):
  g_e, (a, b) = gradients(7, 2)
  out, _ = update_once(make(task_weight=0.0), g_e, a)
  assert_trees_equal(out, g_e)
  # A task weighted 0 is not there: the update of the other task alone.
  out, _ = update_once(make(task_weight=(1.0, 0.0)), g_e, (a, b))
  assert_trees_equal(out, update_once(make(), g_e, a)[0])


def check_the_cosine_is_logged_and_it_chains_and_injects(make):
  g_e, g_t = gradients(8)
  chain = optax.chain(make(), optax.sgd(0.1))
  _, state = chain.update(g_e, chain.init(g_e), g_e, task_grads=g_t)
  cosine = vdot(g_e, g_t) / np.sqrt(vdot(g_e, g_e) * vdot(g_t, g_t))
  assert abs(float(find_combiner_metrics(state)["cosine"]) - cosine) < 1e-6
  injected = optax.inject_hyperparams(make, static_args=("tasks",))(task_weight=0.5, tasks=2)
  g_e, g_t = gradients(9, 2)
  out, _ = jax.jit(injected.update)(g_e, injected.init(g_e), task_grads=g_t)
  assert_trees_close(out, update_once(make(task_weight=0.5, tasks=2), g_e, g_t)[0])


def check_inside_a_partition_it_sees_only_its_own_leaves(make):
  """Under ``optax.partition(..., mask_compatible_extra_args=True)`` the other leaves are masked out
  (``MaskedNode``) of g_e and g_t alike: the update is the combiner's on its own leaves alone."""
  (g_e, g_t), (other_e, other_t) = gradients(11), gradients(12)
  params = {"enhancer": g_e, "recognizer": other_e}
  labels = {"enhancer": jax.tree.map(lambda _: "enhancer", g_e),
            "recognizer": jax.tree.map(lambda _: "recognizer", other_e)}
  tx = optax.partition({"enhancer": make(), "recognizer": optax.identity()}, labels,
                       mask_compatible_extra_args=True)
  updates, _ = jax.jit(tx.update)(params, tx.init(params), params,
                                  task_grads={"enhancer": g_t, "recognizer": other_t})
  assert_trees_close(updates["enhancer"], update_once(make(), g_e, g_t)[0])
  assert_trees_equal(updates["recognizer"], other_e)


def assert_sharded_update_equals_unsharded(tx, rtol=1e-5, atol=1e-6):
  """``tx`` (built for 3 tasks) gives the same update and state on gradients sharded over a 4-device
  mesh, under jit, as on one device, and its update keeps g_e's sharding."""
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  g_e = {"a": jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(16,)), jnp.float32)}
  g_t = tuple(jax.tree.map(lambda x: c * x + jnp.asarray(rng.normal(size=x.shape), jnp.float32), g_e)
              for c in (1.0, -1.0, 0.3))
  expected = update_once(tx, g_e, g_t)
  shard = NamedSharding(mesh, P("data"))
  put = lambda tree: jax.tree.map(lambda x: jax.device_put(x, shard), tree)
  out, state = jax.jit(tx.update)(put(g_e), tx.init(g_e), task_grads=put(g_t))
  assert out["a"].sharding.is_equivalent_to(shard, 2)
  assert_trees_close((out, state), expected, rtol=rtol, atol=atol)


def check_sharded_over_a_4_device_mesh_equals_unsharded(make):
  if jax.device_count() >= 4:   # the root conftest simulates 4 CPU devices
    assert_sharded_update_equals_unsharded(make(tasks=3))


CHECKS = [check_jit_matches_eager_and_keeps_the_state_shape,
          check_a_tree_gives_the_same_as_its_flattened_vector,
          check_bfloat16_gradients_keep_their_dtype,
          check_zero_tiny_and_non_finite_task_gradients_give_g_e,
          check_updates_scale_with_the_gradients,
          check_tuple_and_dict_forms_agree,
          check_zero_task_weight_gives_g_e,
          check_the_cosine_is_logged_and_it_chains_and_injects,
          check_inside_a_partition_it_sees_only_its_own_leaves,
          check_sharded_over_a_4_device_mesh_equals_unsharded]
