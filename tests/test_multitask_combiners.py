"""Combiners for several downstream tasks: each task gated against g_e on its own, per-task options,
per-task state and metrics, and the descent guarantee for any number of tasks."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from gradprom_jax.core.combiners import (CombinerState, GradPromEmaState, enhance_only,
                                         find_combiner_metrics, find_combiner_state, gradprom,
                                         joint, pcgrad, random_gate)
from gradprom_jax.core.combiners.baselines import random_gate_coin
from gradprom_jax.core.combiners.tasks import MultiTaskState

from combiner_battery import assert_sharded_update_equals_unsharded  # noqa: E402
from combiner_trees import random_tree, vdot  # noqa: E402

GATE_MODES = st.sampled_from(["hard", "soft"])
GRANULARITIES = st.sampled_from(["global", "per_leaf"])
SCALES = st.sampled_from(["none", "enhancement_norm"])




def mixed_task_grads(rng, g_e, shapes, correlations):
  """One task gradient per correlation: aligned, opposed and orthogonal ones all occur."""
  return tuple(jax.tree.map(lambda e, n: c * 3.0 * e + (1 - abs(c)) * n, g_e,
                            random_tree(rng, shapes, scale=3.0)) for c in correlations)


shapes_strategy = st.lists(
    st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(shapes=shapes_strategy, seed=st.integers(0, 2**31 - 1),
       correlations=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=4),
       data=st.data())
def test_every_update_is_a_descent_direction_for_any_number_of_tasks(shapes, seed, correlations,
                                                                    data):
  """⟨d, g_e⟩ ≥ ‖g_e‖² for K = 1..4 tasks with mixed per-task options, over a few steps (the moving
  average, when on, carries over between them)."""
  k = len(correlations)
  per_task = lambda strategy: tuple(data.draw(strategy) for _ in range(k))
  options = dict(mode=per_task(GATE_MODES), granularity=per_task(GRANULARITIES),
                 task_scale=per_task(SCALES), task_weight=per_task(st.floats(0.0, 10.0)),
                 threshold=per_task(st.floats(0.0, 0.9)),
                 cosine_ema=data.draw(st.sampled_from([None, 0.5])))
  rng = np.random.default_rng(seed)
  tx = gradprom(tasks=k, **options)
  state = tx.init(random_tree(rng, shapes))
  for _ in range(2):
    g_e = random_tree(rng, shapes)
    g_t = mixed_task_grads(rng, g_e, shapes, correlations)
    d, state = tx.update(g_e, state, task_grads=g_t)
    norm_sq = vdot(g_e, g_e)
    assert vdot(d, g_e) >= norm_sq - 1e-5 * (1.0 + norm_sq) * (1 + sum(options["task_weight"]))
    if all(g == "per_leaf" for g in options["granularity"]):   # then block by block as well
      for key in g_e:
        block_sq = vdot(g_e[key], g_e[key])
        assert vdot(d[key], g_e[key]) >= block_sq - 1e-5 * (1.0 + block_sq) * (
            1 + sum(options["task_weight"]))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 4))
def test_the_guarantee_is_not_vacuous_joint_over_several_tasks_points_uphill(seed, k):
  rng = np.random.default_rng(seed)
  g_e = random_tree(rng, [(3,), (2, 2)])
  opposed = tuple(jax.tree.map(lambda e: -(2.0 + i) * e, g_e) for i in range(k))
  joint_tx, gradprom_tx = joint(tasks=k), gradprom(tasks=k)
  assert vdot(joint_tx.update(g_e, joint_tx.init(g_e), task_grads=opposed)[0], g_e) < 0
  d = gradprom_tx.update(g_e, gradprom_tx.init(g_e), task_grads=opposed)[0]
  assert vdot(d, g_e) == pytest.approx(vdot(g_e, g_e), rel=1e-6)


def test_each_task_is_gated_on_its_own_with_its_own_options():
  g_e = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([1.0, 0.0])}
  aligned = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([2.0, 0.0])}
  opposed = {"a": jnp.array([-1.0, 0.0]), "b": jnp.array([-1.0, 1.0])}
  # One leaf agrees, the other does not: decided per leaf for "masks" only.
  split = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([-5.0, 0.0])}
  tx = gradprom(tasks=("masks", "diagnosis", "grade"),
                task_weight={"masks": 2.0, "diagnosis": 0.5, "grade": 1.0},
                granularity={"masks": "per_leaf", "diagnosis": "global", "grade": "global"},
                mode={"masks": "hard", "diagnosis": "soft", "grade": "hard"})
  g_t = {"masks": split, "diagnosis": aligned, "grade": opposed}
  out, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  cos_diagnosis = vdot(g_e, aligned) / np.sqrt(vdot(g_e, g_e) * vdot(aligned, aligned))
  for key in g_e:
    masks_term = 2.0 * split[key] if key == "a" else 0.0
    expected = g_e[key] + masks_term + 0.5 * cos_diagnosis * aligned[key]
    np.testing.assert_allclose(out[key], expected, rtol=1e-6)
  assert isinstance(state, MultiTaskState) and sorted(state.tasks) == ["diagnosis", "grade", "masks"]
  assert state.tasks["masks"].gate == {"a": 1.0, "b": 0.0}
  assert float(state.tasks["diagnosis"].gate) == pytest.approx(cos_diagnosis, rel=1e-6)
  assert float(state.tasks["grade"].gate) == 0.0 and int(state.tasks["grade"].promoted) == 0
  # The same tasks given by number, as a tuple, make the same update.
  by_number = gradprom(task_weight=(0.5, 1.0, 2.0), granularity=("global", "global", "per_leaf"),
                       mode=("soft", "hard", "hard"))
  out_by_number, state_by_number = by_number.update(
      g_e, by_number.init(g_e), task_grads=(aligned, opposed, split))
  for key in g_e:
    np.testing.assert_array_equal(out_by_number[key], out[key])
  assert isinstance(state_by_number.tasks, tuple) and len(state_by_number.tasks) == 3


def test_one_task_in_a_tuple_updates_exactly_as_the_single_tree_form():
  rng = np.random.default_rng(0)
  g_e, g_t = random_tree(rng, [(3,), (2, 5)]), random_tree(rng, [(3,), (2, 5)])
  for variant in (dict(), dict(mode="soft", granularity="per_leaf"), dict(cosine_ema=0.9)):
    single, one = gradprom(**variant), gradprom(tasks=1, **variant)
    out_single, state_single = single.update(g_e, single.init(g_e), task_grads=g_t)
    out_one, state_one = one.update(g_e, one.init(g_e), task_grads=(g_t,))
    assert isinstance(state_single, (CombinerState, GradPromEmaState))   # the classic state
    for a, b in zip(jax.tree.leaves((out_single, state_single)), jax.tree.leaves((out_one, state_one))):
      np.testing.assert_array_equal(a, b)


def test_per_task_metrics_are_suffixed_with_the_task_names():
  g_e = jnp.array([1.0, 0.0])
  aligned, opposed = jnp.array([1.0, 1.0]), jnp.array([-1.0, 0.0])
  tx = optax.chain(gradprom(tasks=("masks", "diagnosis"), cosine_ema=0.9), optax.sgd(0.1))
  state = tx.init(g_e)
  for _ in range(2):
    _, state = tx.update(g_e, state, g_e, task_grads={"masks": aligned, "diagnosis": opposed})
  metrics = {k: round(float(v), 3) for k, v in find_combiner_metrics(state).items()}
  assert metrics == {"cosine/diagnosis": -1.0, "gate/diagnosis": 0.0, "gate_open_rate/diagnosis": 0.0,
                     "cosine_ema/diagnosis": -1.0, "cosine/masks": 0.707, "gate/masks": 1.0,
                     "gate_open_rate/masks": 1.0, "cosine_ema/masks": 0.707}
  # The first task's CombinerState is found (its count is every task's), also for the MultiSteps check.
  assert int(find_combiner_state(state).count) == 2
  tuple_tx = joint(tasks=2)
  _, tuple_state = tuple_tx.update(g_e, tuple_tx.init(g_e), task_grads=(aligned, opposed))
  assert sorted(find_combiner_metrics(tuple_state)) == [
      "cosine/0", "cosine/1", "gate/0", "gate/1", "gate_open_rate/0", "gate_open_rate/1"]


def test_baselines_combine_each_task_against_the_enhancement_gradient():
  g_e = jnp.array([2.0, 0.0])
  agreeing, conflicting = jnp.array([1.0, 1.0]), jnp.array([-3.0, 1.0])
  g_t = (agreeing, conflicting)
  out, state = joint(task_weight=(1.0, 0.5)).update(g_e, joint(tasks=2).init(g_e), task_grads=g_t)
  np.testing.assert_allclose(out, g_e + agreeing + 0.5 * conflicting)
  # PCGrad: each task projected off g_e on its own (the conflicting one loses its g_e component).
  out, state = pcgrad(tasks=2).update(g_e, pcgrad(tasks=2).init(g_e), task_grads=g_t)
  np.testing.assert_allclose(out, g_e + agreeing + jnp.array([0.0, 1.0]))
  assert [float(s.gate) for s in state.tasks] == [1.0, 0.0]
  out, state = enhance_only(tasks=2).update(g_e, enhance_only(tasks=2).init(g_e), task_grads=g_t)
  assert out is g_e and float(state.tasks[1].cosine) == pytest.approx(-3 / np.sqrt(10))
  _, state = enhance_only(tasks=2).update(g_e, enhance_only(tasks=2).init(g_e))
  assert [float(s.cosine) for s in state.tasks] == [0.0, 0.0]


def test_random_gate_draws_one_coin_per_task_and_task_zero_keeps_the_single_task_coins():
  g_e = jnp.array([1.0, 0.0])
  g_t = (jnp.array([0.0, 1.0]), jnp.array([0.0, 10.0]))
  tx = random_gate(open_rate=(0.5, 0.5), seed=3)
  update = jax.jit(tx.update)
  state, gates, outs = tx.init(g_e), [], []
  for _ in range(64):
    out, state = update(g_e, state, task_grads=g_t)
    gates.append([float(s.gate) for s in state.tasks])
    outs.append(np.asarray(out))
  gates = np.array(gates)
  assert (gates[:, 0] != gates[:, 1]).any()   # independent coins
  np.testing.assert_array_equal(np.array(outs)[:, 1], gates[:, 0] * 1.0 + gates[:, 1] * 10.0)
  single = [bool(random_gate_coin(3, jnp.int32(n), 0.5)) for n in range(64)]
  np.testing.assert_array_equal(gates[:, 0].astype(bool), single)
  with pytest.raises(ValueError, match=r"open_rate must be in \[0, 1\], got 2"):
    random_gate(open_rate=(0.5, 2))


def test_wrong_forms_give_clear_errors():
  g_e = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="built for one task, but task_grads is a tuple of 2 gradient "
                                       "trees: build it with tasks=2"):
    gradprom().update(g_e, gradprom().init(g_e), task_grads=(g_e, g_e))
  tx = gradprom(tasks=("masks", "diagnosis"))
  with pytest.raises(ValueError, match=r"built for tasks \['diagnosis', 'masks'\]: task_grads must be "
                                       "a dict of one gradient tree per task"):
    tx.update(g_e, tx.init(g_e), task_grads=g_e)
  with pytest.raises(ValueError, match="task_grads must have the same tree structure"):
    tx.update(g_e, tx.init(g_e), task_grads={"masks": g_e, "diagnosis": {"v": jnp.ones(2)}})
  with pytest.raises(ValueError, match=r"task_weight=\(1.0, 2.0\) must be one value, or a tuple of 3"):
    gradprom(tasks=3, task_weight=(1.0, 2.0))
  with pytest.raises(ValueError, match="threshold=-0.1 < 0 with mode='hard'"):
    gradprom(threshold=(0.0, -0.1))
  with pytest.raises(ValueError, match="Unknown gate mode 'weighted'"):
    gradprom(mode={"a": "hard", "b": "weighted"})
  with pytest.raises(ValueError, match="task_weight must be >= 0"):
    random_gate(task_weight=(1.0, -1.0))
  with pytest.raises(ValueError, match="tasks must be >= 1, got 0"):
    joint(tasks=0)


def test_works_under_jit_chain_and_inject_hyperparams():
  params = jnp.zeros(2)
  g_e = jnp.array([1.0, 0.0])
  g_t = (jnp.array([1.0, 1.0]), jnp.array([1.0, -3.0]))   # cos 0.707 and 0.316
  tx = optax.inject_hyperparams(gradprom, static_args=("tasks", "mode", "granularity"))(
      tasks=2, threshold=jnp.array([0.5, 0.0]), task_weight=2.0)
  state = tx.init(params)
  out, state = jax.jit(tx.update)(g_e, state, params, task_grads=g_t)
  np.testing.assert_allclose(out, g_e + 2.0 * g_t[0] + 2.0 * g_t[1])
  state.hyperparams["threshold"] = jnp.array([0.9, 0.5])   # both gates close
  out, state = jax.jit(tx.update)(g_e, state, params, task_grads=g_t)
  np.testing.assert_allclose(out, g_e)
  assert int(find_combiner_state(state).count) == 2
  with pytest.raises(ValueError, match="list it in static_args"):
    optax.inject_hyperparams(gradprom)(tasks=2).init(params)
  # A chain forwards task_grads; the state keeps its structure, shapes and dtypes under jit.
  chain = optax.chain(gradprom(tasks=3, granularity=("global", "per_leaf", "global"), cosine_ema=0.9),
                      optax.adam(1e-2))
  tree = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
  state = chain.init(tree)
  three = tuple(jax.tree.map(lambda x, i=i: x * (i - 1.0), tree) for i in range(3))
  _, new_state = jax.jit(chain.update)(tree, state, tree, task_grads=three)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert (old.shape, old.dtype) == (new.shape, new.dtype)


@pytest.mark.parametrize("name", ["gradprom", "pcgrad"])
def test_sharded_over_a_4_device_mesh_equals_unsharded(name):
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
  tx = (gradprom(granularity=("per_leaf", "global", "global"), mode="soft") if name == "gradprom"
        else pcgrad(tasks=3))
  assert_sharded_update_equals_unsharded(tx, rtol=1e-6)
