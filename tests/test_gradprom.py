"""GradProm's rule, its descent guarantee and its numerics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradprom_jax import combiner_metrics, gradprom, joint

from combiner_trees import random_tree, update_thrice_under_jit, vdot  # noqa: E402

VARIANTS = [dict(mode="hard"), dict(mode="soft"), dict(mode="hard", granularity="per_leaf"),
            dict(mode="soft", granularity="per_leaf"), dict(mode="hard", threshold=0.3),
            dict(mode="hard", task_weight=5.0), dict(task_scale="enhancement_norm"),
            dict(mode="soft", granularity="per_leaf", task_scale="enhancement_norm")]




def apply(tx, g_e, g_t):
  out, _ = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  return out


shapes_strategy = st.lists(
    st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(shapes=shapes_strategy, seed=st.integers(0, 2**31 - 1),
       correlation=st.floats(-1.0, 1.0), variant=st.sampled_from(VARIANTS))
def test_update_is_never_less_steep_than_the_enhancement_gradient(shapes, seed, correlation, variant):
  rng = np.random.default_rng(seed)
  g_e = random_tree(rng, shapes)
  noise = random_tree(rng, shapes, scale=3.0)
  # Mix g_e into g_t so that aligned, opposed and orthogonal task gradients all occur.
  g_t = jax.tree.map(lambda e, n: correlation * 3.0 * e + (1 - abs(correlation)) * n, g_e, noise)
  d = apply(gradprom(**variant), g_e, g_t)
  norm_sq = vdot(g_e, g_e)
  assert vdot(d, g_e) >= norm_sq - 1e-5 * (1.0 + norm_sq)


@settings(max_examples=25, deadline=None)
@given(shapes=shapes_strategy, seed=st.integers(0, 2**31 - 1))
def test_joint_training_can_point_uphill_where_gradprom_cannot(shapes, seed):
  """Sanity check of the property above: it is not vacuous, joint training violates it."""
  rng = np.random.default_rng(seed)
  g_e = random_tree(rng, shapes)
  g_t = jax.tree.map(lambda e: -3.0 * e, g_e)
  assert vdot(apply(joint(), g_e, g_t), g_e) < 0
  assert vdot(apply(gradprom(), g_e, g_t), g_e) == pytest.approx(vdot(g_e, g_e), rel=1e-6)


def test_gate_opens_for_aligned_and_closes_for_opposed_gradients():
  g_e = {"w": jnp.array([1.0, 2.0, -1.0])}
  tx = gradprom()
  out, state = tx.update(g_e, tx.init(g_e), task_grads=g_e)
  np.testing.assert_allclose(out["w"], 2 * g_e["w"])
  assert float(state.gate) == 1.0 and float(state.cosine) == pytest.approx(1.0)
  out, state = tx.update(g_e, tx.init(g_e), task_grads=jax.tree.map(jnp.negative, g_e))
  np.testing.assert_array_equal(out["w"], g_e["w"])
  assert float(state.gate) == 0.0 and float(state.cosine) == pytest.approx(-1.0)


@pytest.mark.parametrize("threshold, g_t", [(0.0, [0.0, 1.0]), (0.96, [4.0, 3.0])])
def test_gate_stays_closed_when_cosine_equals_threshold(threshold, g_t):
  g_e = jnp.array([1.0, 0.0]) if threshold == 0.0 else jnp.array([3.0, 4.0])
  g_t = jnp.array(g_t)
  out, state = gradprom(threshold=threshold).update(g_e, gradprom().init(g_e), task_grads=g_t)
  assert float(state.cosine) == np.float32(threshold)
  assert float(state.gate) == 0.0
  np.testing.assert_array_equal(out, g_e)
  # Nudging the task gradient towards g_e opens the gate.
  out, state = gradprom(threshold=threshold).update(g_e, gradprom().init(g_e),
                                                    task_grads=g_t + 0.01 * g_e)
  assert float(state.gate) == 1.0


def test_per_leaf_decides_each_leaf_on_its_own():
  g_e = {"aligned": jnp.array([1.0, 1.0]), "opposed": jnp.array([2.0, 0.0])}
  g_t = {"aligned": jnp.array([2.0, 1.0]), "opposed": jnp.array([-1.0, 0.1])}
  tx = gradprom(granularity="per_leaf")
  out, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  np.testing.assert_allclose(out["aligned"], g_e["aligned"] + g_t["aligned"])
  np.testing.assert_array_equal(out["opposed"], g_e["opposed"])
  assert state.gate == {"aligned": 1.0, "opposed": 0.0}
  assert state.promoted == {"aligned": 1, "opposed": 0}
  assert float(combiner_metrics(state)["gate"]) == 0.5
  # The global rule sees one cosine over both leaves (positive here) and adds everything.
  out_global = apply(gradprom(), g_e, g_t)
  np.testing.assert_allclose(out_global["opposed"], g_e["opposed"] + g_t["opposed"])


def test_soft_gate_weights_by_cosine_and_task_weight_scales():
  g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])
  cos = 1 / np.sqrt(2)
  np.testing.assert_allclose(apply(gradprom(mode="soft"), g_e, g_t), g_e + cos * g_t, rtol=1e-6)
  np.testing.assert_allclose(apply(gradprom(task_weight=0.25), g_e, g_t), g_e + 0.25 * g_t)


@pytest.mark.parametrize("granularity", ["global", "per_leaf"])
def test_enhancement_norm_scale_rescales_task_gradient_to_enhancement_norm(granularity):
  g_e = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([1.0, 0.0])}
  aligned = {"a": jnp.array([300.0, 0.0]), "b": jnp.array([0.02, 0.02])}
  tx = gradprom(task_weight=0.5, granularity=granularity, task_scale="enhancement_norm")
  out = apply(tx, g_e, aligned)
  norm = lambda tree: float(np.sqrt(vdot(tree, tree)))
  if granularity == "per_leaf":   # each leaf's task part is λ‖g_e,leaf‖ long
    for key in g_e:
      added = out[key] - g_e[key]
      np.testing.assert_allclose(np.linalg.norm(added), 0.5 * np.linalg.norm(g_e[key]), rtol=1e-5)
  else:                           # one ratio for the whole tree: direction of g_t kept
    added = jax.tree.map(jnp.subtract, out, g_e)
    np.testing.assert_allclose(norm(added), 0.5 * norm(g_e), rtol=1e-5)
    ratio = 0.5 * norm(g_e) / norm(aligned)
    for key in g_e:
      np.testing.assert_allclose(added[key], ratio * aligned[key], rtol=1e-5, atol=1e-6)
  # Closed gate: g_e passes unchanged, however large g_t is.
  opposed = jax.tree.map(lambda t: -t, aligned)
  for key, value in apply(tx, g_e, opposed).items():
    np.testing.assert_array_equal(value, g_e[key])
  with pytest.raises(ValueError, match="Unknown task_scale 'unit'"):
    gradprom(task_scale="unit")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30])
def test_zero_tiny_and_huge_gradients_stay_finite(variant, scale):
  rng = np.random.default_rng(0)
  g_e = random_tree(rng, [(3,), (2, 2)], scale=scale)
  g_t = jax.tree.map(lambda x: 2 * x, g_e)   # aligned: the gate must open whenever g_e != 0
  tx = gradprom(**variant)
  out, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((out, state)))
  expected_open = 1.0 if scale else 0.0
  assert float(combiner_metrics(state)["gate"]) == pytest.approx(expected_open)


def test_zero_task_gradient_leaves_update_unchanged():
  g_e = {"w": jnp.array([0.3, -2.0])}
  for variant in VARIANTS:
    out = apply(gradprom(**variant), g_e, {"w": jnp.zeros(2)})
    np.testing.assert_array_equal(out["w"], g_e["w"])


def test_non_finite_task_gradient_keeps_the_gate_closed():
  g_e = {"w": jnp.array([1.0, 2.0])}
  for bad in (jnp.nan, jnp.inf):
    out, state = gradprom().update(g_e, gradprom().init(g_e), task_grads={"w": jnp.array([bad, 1.0])})
    np.testing.assert_array_equal(out["w"], g_e["w"])
    assert float(state.gate) == 0.0 and np.isfinite(float(state.cosine))


@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_gradients_keep_their_dtype_and_agree_with_float32(variant):
  rng = np.random.default_rng(1)
  g_e = random_tree(rng, [(8,), (4, 4)])
  g_t = jax.tree.map(lambda x: x + 0.5, g_e)
  as_bf16 = lambda tree: jax.tree.map(lambda x: x.astype(jnp.bfloat16), tree)
  out16 = apply(gradprom(**variant), as_bf16(g_e), as_bf16(g_t))
  out32 = apply(gradprom(**variant), g_e, g_t)
  for a, b in zip(jax.tree.leaves(out16), jax.tree.leaves(out32)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(a), b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_structure_shapes_and_dtypes_are_stable(variant):
  rng = np.random.default_rng(2)
  g_e, g_t = random_tree(rng, [(3,), (2, 5)]), random_tree(rng, [(3,), (2, 5)])
  state = update_thrice_under_jit(gradprom(**variant), g_e, g_t)
  assert int(state.count) == 3


def test_counts_promoted_updates_and_logs_the_rate():
  g_e = jnp.array([1.0, 0.0])
  tx = gradprom()
  state = tx.init(g_e)
  for g_t in ([1.0, 0.0], [-1.0, 0.0], [1.0, 1.0], [0.0, 1.0]):
    _, state = tx.update(g_e, state, task_grads=jnp.array(g_t))
  assert int(state.count) == 4 and int(state.promoted) == 2
  assert float(combiner_metrics(state)["gate_open_rate"]) == 0.5


def test_missing_or_mismatched_task_grads_give_clear_errors():
  g_e = {"w": jnp.ones(2)}
  tx = gradprom()
  with pytest.raises(ValueError, match="needs the task gradient"):
    tx.update(g_e, tx.init(g_e))
  with pytest.raises(ValueError, match="same tree structure"):
    tx.update(g_e, tx.init(g_e), task_grads={"v": jnp.ones(2)})
  with pytest.raises(ValueError, match="granularity"):
    gradprom(granularity="per_layer")
  with pytest.raises(ValueError, match="gate mode"):
    gradprom(mode="weighted")


def test_negative_threshold_is_refused_for_the_hard_gate():
  from gradprom_jax.configuration.config import base_config
  from gradprom_jax.configuration.config_validation import ConfigError, validate_config
  with pytest.raises(ValueError, match="threshold=-0.1 < 0 with mode='hard'.*use a threshold >= 0"):
    gradprom(threshold=-0.1)
  config = base_config()
  config.gradprom.threshold = -0.1
  with pytest.raises(ConfigError, match="set gradprom.threshold >= 0"):
    validate_config(config)
  config.gradprom.mode = "soft"
  validate_config(config)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), correlation=st.floats(-1.0, 1.0),
       threshold=st.floats(-1.0, -1e-3), granularity=st.sampled_from(["global", "per_leaf"]))
def test_soft_gate_with_negative_threshold_acts_as_threshold_zero(seed, correlation, threshold,
                                                                   granularity):
  """max(cos, 0) is 0 wherever cos ≤ 0, so the gate's extra openings for cos ∈ (τ, 0] add nothing."""
  rng = np.random.default_rng(seed)
  g_e = random_tree(rng, [(3,), (2, 2)])
  g_t = jax.tree.map(lambda e, n: correlation * e + (1 - abs(correlation)) * n, g_e,
                     random_tree(rng, [(3,), (2, 2)]))
  negative = gradprom(mode="soft", threshold=threshold, granularity=granularity)
  zero = gradprom(mode="soft", threshold=0.0, granularity=granularity)
  out, state = negative.update(g_e, negative.init(g_e), task_grads=g_t)
  expected, expected_state = zero.update(g_e, zero.init(g_e), task_grads=g_t)
  for a, b in zip(jax.tree.leaves((out, state)), jax.tree.leaves((expected, expected_state))):
    np.testing.assert_array_equal(a, b)
  # A non-finite task gradient (undefined cosine) keeps the gate closed: no NaN reaches the update.
  bad = jax.tree.map(lambda t: t.at[0].set(jnp.nan), g_t)
  out, _ = negative.update(g_e, negative.init(g_e), task_grads=bad)
  assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(out))


EMA_VARIANTS = [dict(cosine_ema=0.9), dict(cosine_ema=0.5, mode="soft"),
                dict(cosine_ema=0.9, granularity="per_leaf"),
                dict(cosine_ema=0.99, threshold=0.2, task_scale="enhancement_norm"),
                dict(cosine_ema=0.8, mode="soft", granularity="per_leaf", task_weight=4.0)]


@settings(max_examples=30, deadline=None)
@given(shapes=shapes_strategy, seed=st.integers(0, 2**31 - 1),
       correlations=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=8),
       variant=st.sampled_from(EMA_VARIANTS))
def test_gating_on_the_cosine_average_keeps_every_step_a_descent_direction(shapes, seed,
                                                                          correlations, variant):
  """⟨d_t, g_e,t⟩ ≥ ‖g_e,t‖² at every step of a sequence, whatever the average has seen before."""
  rng = np.random.default_rng(seed)
  tx = gradprom(**variant)
  state = tx.init(random_tree(rng, shapes))
  for correlation in correlations:
    g_e = random_tree(rng, shapes)
    g_t = jax.tree.map(lambda e, n: correlation * 3.0 * e + (1 - abs(correlation)) * n, g_e,
                       random_tree(rng, shapes, scale=3.0))
    d, state = tx.update(g_e, state, task_grads=g_t)
    norm_sq = vdot(g_e, g_e)
    assert vdot(d, g_e) >= norm_sq - 1e-5 * (1.0 + norm_sq)
    if variant.get("granularity") == "per_leaf":   # the guarantee holds block by block
      for key in g_e:
        block_sq = vdot(g_e[key], g_e[key])
        assert vdot(d[key], g_e[key]) >= block_sq - 1e-5 * (1.0 + block_sq)


def test_cosine_average_closes_the_gate_after_a_run_of_conflicts_and_is_bias_corrected():
  from gradprom_jax.core.combiners import (GradPromEmaState, find_combiner_metrics,
                                           find_combiner_state)
  g_e = jnp.array([1.0, 0.0])
  aligned, opposed = jnp.array([1.0, 1.0]), jnp.array([-1.0, 0.5])   # cos 0.707 and -0.894
  tx = gradprom(cosine_ema=0.9)
  _, state = tx.update(g_e, tx.init(g_e), task_grads=aligned)
  assert isinstance(state, GradPromEmaState)
  # Bias-corrected: after one step the average is that step's cosine, not 0.1 of it.
  assert float(state.cosine_ema) == pytest.approx(1 / np.sqrt(2), rel=1e-5)
  assert float(state.combiner.gate) == 1.0
  for _ in range(5):
    _, state = tx.update(g_e, state, task_grads=opposed)
  out, state = tx.update(g_e, state, task_grads=aligned)
  assert float(state.cosine_ema) < 0   # the conflicts still dominate the average
  np.testing.assert_array_equal(out, g_e)   # so the aligned step is refused
  assert find_combiner_state(state) is state.combiner and int(state.combiner.promoted) == 1
  logged = find_combiner_metrics(state)
  assert logged["cosine_ema"] == pytest.approx(float(state.cosine_ema))
  assert logged["cosine"] == pytest.approx(1 / np.sqrt(2), rel=1e-5) and logged["gate"] == 0.0
  # The per-step rule would have opened; β = 0 is the per-step rule with the plain state.
  assert float(gradprom().update(g_e, gradprom().init(g_e), task_grads=aligned)[1].gate) == 1.0
  assert type(gradprom(cosine_ema=0.0).init(g_e)).__name__ == "CombinerState"
  assert "cosine_ema" not in find_combiner_metrics(gradprom().init(g_e))


@pytest.mark.parametrize("variant", EMA_VARIANTS)
def test_cosine_average_state_is_stable_under_jit_and_per_leaf(variant):
  from gradprom_jax.core.combiners import find_combiner_state
  rng = np.random.default_rng(3)
  g_e, g_t = random_tree(rng, [(3,), (2, 5)]), random_tree(rng, [(3,), (2, 5)])
  state = update_thrice_under_jit(gradprom(**variant), g_e, g_t)
  assert int(find_combiner_state(state).count) == 3
  # The same pair thrice: the bias-corrected average equals that pair's cosine.
  for ema, cosine in zip(jax.tree.leaves(state.cosine_ema), jax.tree.leaves(state.combiner.cosine)):
    np.testing.assert_allclose(ema, cosine, rtol=1e-5, atol=1e-6)


def test_cosine_average_option_is_checked_and_wired_from_the_config():
  from gradprom_jax.configuration.config import base_config
  from gradprom_jax.configuration.config_validation import ConfigError, validate_config
  from gradprom_jax.core.combiners import GradPromEmaState
  from gradprom_jax.training.run_config import config_differences
  from gradprom_jax.training.training_spec import enhancer_tx_from_config, phases_from_config
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match=r"cosine_ema must be a Python float in \[0, 1\)"):
      gradprom(cosine_ema=bad)
  config = base_config()
  config.gradprom.cosine_ema = 0.95
  validate_config(config)
  tx = enhancer_tx_from_config(config, phases_from_config(config))
  assert isinstance(tx.init({"w": jnp.zeros(2)})[0].tasks["segmentation"], GradPromEmaState)
  config.gradprom.cosine_ema = 1.0
  with pytest.raises(ConfigError, match=r"gradprom.cosine_ema=1.0 must be in \[0, 1\)"):
    validate_config(config)
  old = base_config().to_dict()
  del old["gradprom"]["cosine_ema"]
  assert config_differences(old, base_config()) == []
