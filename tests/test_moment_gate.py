"""GradProm gated on the cosine of moving averages of g_e and g_t (``gradient_ema=β``)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gradprom_jax import gradprom
from gradprom_jax.core.combiners import (CombinerState, GradPromMomentState, find_combiner_metrics,
                                         find_combiner_state)

from combiner_trees import random_tree, update_thrice_under_jit, vdot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MOMENT_VARIANTS = [dict(gradient_ema=0.9), dict(gradient_ema=0.5, mode="soft"),
                   dict(gradient_ema=0.9, granularity="per_leaf"),
                   dict(gradient_ema=0.99, threshold=0.2, task_scale="enhancement_norm"),
                   dict(gradient_ema=0.8, mode="soft", granularity="per_leaf", task_weight=4.0)]
G_E = jnp.array([1.0, 0.0])
ALIGNED, OPPOSED = jnp.array([1.0, 1.0]), jnp.array([-1.0, 0.5])   # cos 0.707 and -0.894


def mixed_task_gradient(rng, g_e, correlation, shapes):
  """g_t mixing g_e in, so that aligned, opposed and orthogonal task gradients all occur."""
  return jax.tree.map(lambda e, n: correlation * 3.0 * e + (1 - abs(correlation)) * n, g_e,
                      random_tree(rng, shapes, scale=3.0))


@settings(max_examples=15, deadline=None)
@given(shapes=st.lists(st.lists(st.integers(1, 4), max_size=3).map(tuple), min_size=1, max_size=4),
       seed=st.integers(0, 2**31 - 1), decay=st.floats(0.0, 0.999),
       correlations=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=8),
       variant=st.sampled_from(MOMENT_VARIANTS))
def test_gating_on_the_gradient_averages_keeps_every_step_a_descent_direction(
    shapes, seed, decay, correlations, variant):
  """⟨d_t, g_e,t⟩ ≥ ‖g_e,t‖² at every step, whatever the moments have seen before."""
  rng = np.random.default_rng(seed)
  tx = gradprom(**{**variant, "gradient_ema": decay})
  state = tx.init(random_tree(rng, shapes))
  for correlation in correlations:
    g_e = random_tree(rng, shapes)
    d, state = tx.update(g_e, state, task_grads=mixed_task_gradient(rng, g_e, correlation, shapes))
    blocks = g_e if variant.get("granularity") == "per_leaf" else {"all": None}
    for key in blocks:   # the guarantee holds block by block for per-leaf decisions
      e, u = (g_e, d) if key == "all" else (g_e[key], d[key])
      norm_sq = vdot(e, e)
      assert vdot(u, e) >= norm_sq - 1e-5 * (1.0 + norm_sq)


def test_gate_closes_when_the_averages_disagree_though_the_step_agrees():
  tx = gradprom(gradient_ema=0.9)
  _, state = tx.update(G_E, tx.init(G_E), task_grads=ALIGNED)
  assert isinstance(state, GradPromMomentState)
  # Not bias-corrected, yet after one step the moments' cosine is that step's: the correction
  # would scale both moments alike.
  assert float(state.moment_cosine) == pytest.approx(1 / np.sqrt(2), rel=1e-5)
  np.testing.assert_allclose(state.enhancement_moment, 0.1 * G_E, rtol=1e-6)
  assert float(state.combiner.gate) == 1.0
  for _ in range(5):
    _, state = tx.update(G_E, state, task_grads=OPPOSED)
  out, state = tx.update(G_E, state, task_grads=ALIGNED)
  assert float(state.combiner.cosine) > 0 > float(state.moment_cosine)
  np.testing.assert_array_equal(out, G_E)   # the aligned step is refused
  assert find_combiner_state(state) is state.combiner and int(state.combiner.promoted) == 1
  logged = find_combiner_metrics(state)
  assert logged["moment_cosine"] == pytest.approx(float(state.moment_cosine))
  assert logged["gate"] == 0.0 and "cosine_ema" not in logged
  # The per-step rule opens on that step.
  assert float(gradprom().update(G_E, gradprom().init(G_E), task_grads=ALIGNED)[1].gate) == 1.0


def test_averages_weigh_gradients_by_their_size_where_a_cosine_average_cannot():
  """One large conflicting step outweighs many small agreeing ones in the moments, not in the
  cosine average (each step's cosine counts the same there, whatever the gradients' norms)."""
  by_gradients, by_cosine = gradprom(gradient_ema=0.9), gradprom(cosine_ema=0.9)
  moment_state, cosine_state = by_gradients.init(G_E), by_cosine.init(G_E)
  steps = [(100 * G_E, -100 * ALIGNED)] + [(G_E, ALIGNED)] * 3
  for g_e, g_t in steps:
    moment_out, moment_state = by_gradients.update(g_e, moment_state, task_grads=g_t)
    cosine_out, cosine_state = by_cosine.update(g_e, cosine_state, task_grads=g_t)
  np.testing.assert_array_equal(moment_out, G_E)
  np.testing.assert_allclose(cosine_out, G_E + ALIGNED)


def test_zero_decay_reproduces_plain_gradprom_exactly():
  rng = np.random.default_rng(0)
  shapes = [(3,), (2, 5)]
  steps = [(random_tree(rng, shapes), random_tree(rng, shapes)) for _ in range(6)]
  for options in (dict(), dict(mode="soft", granularity="per_leaf")):
    plain, off = gradprom(**options), gradprom(gradient_ema=0.0, **options)
    # β → 0 through the moment path itself: m = g exactly in float32 (1 − 1e-12 rounds to 1).
    vanishing = gradprom(gradient_ema=1e-12, **options)
    plain_state, off_state, vanishing_state = plain.init(steps[0][0]), off.init(steps[0][0]), \
        vanishing.init(steps[0][0])
    assert type(off_state) is CombinerState
    gates = []
    for g_e, g_t in steps:
      expected, plain_state = plain.update(g_e, plain_state, task_grads=g_t)
      off_out, off_state = off.update(g_e, off_state, task_grads=g_t)
      out, vanishing_state = vanishing.update(g_e, vanishing_state, task_grads=g_t)
      for a, b, c in zip(jax.tree.leaves((expected, plain_state)),
                         jax.tree.leaves((off_out, off_state)),
                         jax.tree.leaves((out, vanishing_state.combiner))):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
      gates += jax.tree.leaves(plain_state.gate)
    assert 0 < sum(float(g) > 0 for g in gates) < len(gates)   # both decisions were exercised


@pytest.mark.parametrize("variant", MOMENT_VARIANTS)
def test_state_is_stable_under_jit_and_keeps_float32_moments(variant):
  rng = np.random.default_rng(3)
  shapes = [(3,), (2, 5)]
  g_e, g_t = random_tree(rng, shapes), random_tree(rng, shapes)
  as_bf16 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)
  for dtype_of in (lambda tree: tree, as_bf16):
    state = update_thrice_under_jit(gradprom(**variant), dtype_of(g_e), dtype_of(g_t))
    assert int(find_combiner_state(state).count) == 3
    for moment in (state.enhancement_moment, state.task_moment):
      assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(moment))
      assert jax.tree.structure(moment) == jax.tree.structure(g_e)
    # The same pair thrice: the moments are (1 − β³) g, whose cosine is the pair's own.
    for moment_cosine, cosine in zip(jax.tree.leaves(state.moment_cosine),
                                     jax.tree.leaves(state.combiner.cosine)):
      np.testing.assert_allclose(moment_cosine, cosine, rtol=1e-5, atol=1e-6)


def test_a_non_finite_step_does_not_poison_the_averages():
  tx = gradprom(gradient_ema=0.9)
  _, state = tx.update(G_E, tx.init(G_E), task_grads=ALIGNED)
  out, state = tx.update(G_E, state, task_grads=jnp.array([jnp.nan, 1.0]))
  np.testing.assert_array_equal(out, G_E)
  assert np.all(np.isfinite(state.task_moment))
  out, state = tx.update(G_E, state, task_grads=ALIGNED)
  np.testing.assert_allclose(out, G_E + ALIGNED)


def test_several_tasks_keep_one_pair_of_averages_each():
  tx = optax.chain(gradprom(tasks=("masks", "diagnosis"), gradient_ema=0.9), optax.sgd(0.1))
  state = tx.init(G_E)
  for _ in range(3):
    _, state = tx.update(G_E, state, G_E, task_grads={"masks": ALIGNED, "diagnosis": OPPOSED})
  per_task = state[0].tasks
  assert set(per_task) == {"masks", "diagnosis"}
  for name, g_t in (("masks", ALIGNED), ("diagnosis", OPPOSED)):
    assert isinstance(per_task[name], GradPromMomentState)
    np.testing.assert_allclose(per_task[name].task_moment, (1 - 0.9**3) * g_t, rtol=1e-5)
  logged = find_combiner_metrics(state)
  assert logged["moment_cosine/masks"] == pytest.approx(1 / np.sqrt(2), rel=1e-5)
  assert logged["moment_cosine/diagnosis"] == pytest.approx(-0.894, abs=1e-3)
  # Tuple task gradients, one per-leaf task and one global.
  tx = gradprom(tasks=2, granularity=("per_leaf", "global"), gradient_ema=0.5)
  params = {"a": G_E, "b": G_E}
  out, state = tx.update(params, tx.init(params), task_grads=({"a": ALIGNED, "b": OPPOSED},
                                                              {"a": OPPOSED, "b": OPPOSED}))
  np.testing.assert_allclose(out["a"], G_E + ALIGNED)
  np.testing.assert_allclose(out["b"], G_E)
  assert set(state.tasks[0].moment_cosine) == {"a", "b"}


def test_inside_partition_the_averages_cover_only_the_enhancer_leaves():
  params = {"enhancer": {"w": jnp.zeros(2)}, "recognizer": {"w": jnp.zeros(3)}}
  g_e = {"enhancer": {"w": G_E}, "recognizer": {"w": jnp.ones(3)}}
  g_t = {"enhancer": {"w": ALIGNED}, "recognizer": {"w": -jnp.ones(3)}}
  labels = {"enhancer": {"w": "enhancer"}, "recognizer": {"w": "recognizer"}}
  tx = optax.partition({"enhancer": gradprom(gradient_ema=0.9), "recognizer": optax.identity()},
                       labels, mask_compatible_extra_args=True)
  updates, state = jax.jit(tx.update)(g_e, tx.init(params), params, task_grads=g_t)
  np.testing.assert_allclose(updates["enhancer"]["w"], G_E + ALIGNED)
  moments = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, GradPromMomentState))
             if isinstance(s, GradPromMomentState)][0]
  assert [x.shape for x in jax.tree.leaves(moments.task_moment)] == [(2,)]
  assert float(find_combiner_metrics(state)["moment_cosine"]) == pytest.approx(1 / np.sqrt(2), 1e-5)


@pytest.mark.parametrize("granularity", ["global", "per_leaf"])
def test_sharded_over_a_4_device_mesh_equals_unsharded(granularity):
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices (XLA_FLAGS=--xla_force_host_platform_device_count=4)")
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rng = np.random.default_rng(0)
  shapes = [(8, 3), (16,)]
  steps = [(random_tree(rng, shapes), random_tree(rng, shapes)) for _ in range(3)]
  tx = gradprom(granularity=granularity, mode="soft", gradient_ema=0.9)
  put = lambda tree: jax.device_put(tree, NamedSharding(mesh, P("data")))
  expected_state = state = tx.init(steps[0][0])
  state = jax.device_put(state, NamedSharding(mesh, P()))
  update = jax.jit(tx.update)
  for g_e, g_t in steps:
    expected, expected_state = tx.update(g_e, expected_state, task_grads=g_t)
    out, state = update(put(g_e), state, task_grads=put(g_t))
  for a, b in zip(jax.tree.leaves((out, state)), jax.tree.leaves((expected, expected_state))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_state_checkpoints_and_restores_bitwise(tmp_path):
  from gradprom_jax.training.checkpointing import Checkpointer
  rng = np.random.default_rng(1)
  g_e = random_tree(rng, [(4,), (2, 3)])
  tx = optax.chain(gradprom(gradient_ema=0.9, granularity="per_leaf"), optax.adam(1e-3))
  state = tx.init(g_e)
  for _ in range(2):
    _, state = tx.update(g_e, state, g_e, task_grads=random_tree(rng, [(4,), (2, 3)]))
  iterator = lambda: iter(grain.MapDataset.range(4).to_iter_dataset())
  with Checkpointer(tmp_path, save_interval_steps=1) as checkpointer:
    assert checkpointer.save(2, {"opt_state": state}, iterator())
  with Checkpointer(tmp_path, save_interval_steps=1) as checkpointer:
    restored, step = checkpointer.restore_latest({"opt_state": tx.init(g_e)}, iterator())
  assert step == 2 and isinstance(restored["opt_state"][0], GradPromMomentState)
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored["opt_state"]), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_inject_hyperparams_with_a_static_gradient_average():
  tx = optax.inject_hyperparams(gradprom, static_args=("gradient_ema",))(gradient_ema=0.9,
                                                                         threshold=0.5)
  state = tx.init(jnp.zeros(2))
  assert isinstance(state.inner_state, GradPromMomentState)
  out, _ = jax.jit(tx.update)(G_E, state, task_grads=ALIGNED)
  np.testing.assert_allclose(out, G_E + ALIGNED)
  with pytest.raises(ValueError, match="list it in static_args"):
    optax.inject_hyperparams(gradprom)(gradient_ema=0.9).init(jnp.zeros(2))


def test_option_is_checked_and_wired_from_the_config():
  from gradprom_jax.configuration.config import base_config
  from gradprom_jax.configuration.config_validation import ConfigError, validate_config
  from gradprom_jax.training.run_config import config_differences
  from gradprom_jax.training.training_spec import enhancer_tx_from_config, phases_from_config
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match=r"gradient_ema must be a Python float in \[0, 1\)"):
      gradprom(gradient_ema=bad)
  with pytest.raises(ValueError, match="choose one moving average"):
    gradprom(cosine_ema=0.9, gradient_ema=0.9)
  config = base_config()
  config.gradprom.gradient_ema = 0.95
  validate_config(config)
  tx = enhancer_tx_from_config(config, phases_from_config(config))
  assert isinstance(tx.init({"w": jnp.zeros(2)})[0].tasks["segmentation"], GradPromMomentState)
  config.gradprom.cosine_ema = 0.9
  with pytest.raises(ConfigError, match="choose one moving average"):
    validate_config(config)
  config.gradprom.cosine_ema, config.gradprom.gradient_ema = 0.0, 1.0
  with pytest.raises(ConfigError, match=r"gradprom.gradient_ema=1.0 must be in \[0, 1\)"):
    validate_config(config)
  old = base_config().to_dict()   # a workdir written before the option existed still resumes
  del old["gradprom"]["gradient_ema"]
  assert config_differences(old, base_config()) == []


@pytest.mark.slow
def test_smoke_run_with_the_gradient_average_logs_the_moment_cosine(tmp_path):
  workdir = tmp_path / "run"
  command = [sys.executable, str(REPO / "experiments" / "main.py"),
             "--config=configs/default.py:smoke", f"--workdir={workdir}",
             f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.gradprom.gradient_ema=0.9"]
  completed = subprocess.run(command, cwd=REPO, env=dict(os.environ), capture_output=True,
                             text=True, timeout=600)
  assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["kind"] == "train" and "cosine" in r]
  assert train and all(-1.0 <= r["moment_cosine"] <= 1.0 for r in train)
  assert (workdir / "results.json").exists()
