"""Joint training, PCGrad and enhancement-only: the baselines GradProm is compared with."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradprom_jax import COMBINERS, enhance_only, get_combiner, joint, pcgrad
from gradprom_jax.core.combiners import find_combiner_state, random_gate
from gradprom_jax.core.combiners.baselines import random_gate_coin


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
  assert int(find_combiner_state(state).count) == 1


def test_registry_rejects_unknown_names_and_bad_options():
  with pytest.raises(ValueError, match="Unknown combiner 'gradnorm'; valid names: .*gradprom"):
    get_combiner("gradnorm")
  with pytest.raises(ValueError, match="task_weight must be >= 0"):
    get_combiner("gradprom", task_weight=-1.0)
  with pytest.raises(TypeError):
    get_combiner("joint", threshold=0.1)


def run_random_gate(tx, g_e, g_t, num_updates):
  """The gates and outputs of ``num_updates`` updates, under one jit'd scan."""
  def step(state, _):
    out, state = tx.update(g_e, state, task_grads=g_t)
    return state, (state.gate, out)
  state, (gates, outs) = jax.lax.scan(step, tx.init(g_e), None, length=num_updates)
  return state, np.asarray(gates), outs


@pytest.mark.parametrize("open_rate", [0.1, 0.5, 0.83])
def test_random_gate_opens_on_the_requested_fraction_of_updates(open_rate):
  g_e, g_t = random_pair(5)
  n = 2000
  state, gates, _ = run_random_gate(random_gate(open_rate=open_rate, seed=1), g_e, g_t, n)
  sigma = np.sqrt(open_rate * (1 - open_rate) / n)
  assert abs(gates.mean() - open_rate) < 3 * sigma
  assert int(state.promoted) == int(gates.sum()) and int(state.count) == n


def test_random_gate_is_fixed_by_its_seed_and_independent_of_the_cosine():
  g_e, g_t = random_pair(6)
  opposed = jax.tree.map(jnp.negative, g_e)
  _, gates_a, _ = run_random_gate(random_gate(seed=3), g_e, g_t, 200)
  _, gates_b, _ = run_random_gate(random_gate(seed=3), g_e, opposed, 200)
  _, gates_c, _ = run_random_gate(random_gate(seed=4), g_e, g_t, 200)
  np.testing.assert_array_equal(gates_a, gates_b)   # same coins whatever g_t is
  assert (gates_a != gates_c).any()
  # The coin depends only on (seed, update count): a resumed state draws the coins a fresh run would.
  expected = [bool(random_gate_coin(3, jnp.int32(n), 0.5)) for n in range(200)]
  np.testing.assert_array_equal(gates_a.astype(bool), expected)


def test_random_gate_adds_the_weighted_task_gradient_exactly_when_the_coin_opens():
  g_e, g_t = random_pair(7)
  state, gates, outs = run_random_gate(random_gate(task_weight=0.5, seed=2), g_e, g_t, 64)
  assert 0 < gates.sum() < 64
  for key in g_e:
    opened = (g_e[key] + np.float32(0.5) * g_t[key]).reshape(-1)
    expected = np.where(gates[:, None] > 0, opened, np.reshape(g_e[key], -1))
    np.testing.assert_array_equal(np.reshape(outs[key], (64, -1)), expected)
  # The cosine is logged as with the other combiners.
  assert float(state.cosine) == pytest.approx(vdot(g_e, g_t) / np.sqrt(vdot(g_e, g_e) * vdot(g_t, g_t)),
                                              rel=1e-5)
  with pytest.raises(ValueError, match=r"open_rate must be in \[0, 1\]"):
    random_gate(open_rate=-0.1)


def test_random_gate_method_is_wired_from_the_config():
  from gradprom_jax.configuration.config import base_config
  from gradprom_jax.configuration.config_validation import ConfigError, validate_config
  from gradprom_jax.training.run_config import config_differences
  from gradprom_jax.training.training_spec import enhancer_tx_from_config, phases_from_config

  config = base_config()
  config.method, config.seed, config.random_gate.open_rate = "random_gate", 5, 0.3
  validate_config(config)
  phases = phases_from_config(config)
  assert phases[-1].enhancer_gradient == "separate"
  # The combiner, first in the enhancer's chain, draws the coins of random_gate(0.3, seed=5) for
  # the config's one task (its state and gradient under the task's name).
  g_e, g_t = random_pair(8)
  tx = enhancer_tx_from_config(config, phases)
  state, gates = tx.init(g_e), []
  for _ in range(40):
    _, state = tx.update(g_e, state, g_e, task_grads={"segmentation": g_t})
    gates.append(float(state[0].tasks["segmentation"].gate))
  _, expected_gates, _ = run_random_gate(random_gate(open_rate=0.3, seed=5), g_e, g_t, 40)
  np.testing.assert_array_equal(gates, expected_gates)
  config.random_gate.open_rate = 1.2
  with pytest.raises(ConfigError, match=r"random_gate.open_rate=1.2 must be in \[0, 1\]"):
    validate_config(config)
  # Workdirs made before the key existed still resume with the default.
  old = base_config().to_dict()
  del old["random_gate"]
  assert config_differences(old, base_config()) == []
