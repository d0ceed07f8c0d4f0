"""The method table: what is derived from it, and that every method option reaches the combiner."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax import COMBINERS
from gradprom_jax.configuration import run_spec
from gradprom_jax.configuration.config import METHODS, base_config
from gradprom_jax.core import methods
from gradprom_jax.core.combiners import combiner_metrics, find_combiner_metrics, find_combiner_state
from gradprom_jax.core.combiners.skeleton import make_combiner
from gradprom_jax.training.training_spec import enhancer_tx_from_config, phases_from_config

# A value other than the default for every config key a combiner reads. A key added to a method's
# config group needs one here, or test_every_method_option_reaches_the_combiner fails.
OTHER_VALUES = {
    "task_weight": 2.0,
    "seed": 1,
    "gradprom.threshold": 0.5,
    "gradprom.mode": "soft",
    "gradprom.granularity": "per_leaf",
    "gradprom.task_scale": "enhancement_norm",
    "gradprom.cosine_ema": 0.9,
    "gradprom.gradient_ema": 0.9,
    "random_gate.open_rate": 0.0,
}

# Two alternating steps on a two-leaf tree, so every option changes some update: step one conflicts
# (cos ≈ -0.95), step two agrees globally (cos ≈ 0.32, below 0.5) with one leaf agreeing and the
# other conflicting, and ‖g_t‖ ≠ ‖g_e‖.
_G_E = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([1.0, 0.0])}
_STEPS = [(_G_E, {"a": jnp.array([-3.0, 1.0]), "b": jnp.array([-3.0, 1.0])}),
          (_G_E, {"a": jnp.array([3.0, 1.0]), "b": jnp.array([-1.0, 3.0])})] * 4


def _behaviour(tx) -> np.ndarray:
  """Every update and logged gate of ``tx`` over the fixed steps, flattened."""
  state, seen = tx.init(_G_E), []
  for g_e, g_t in _STEPS:
    update, state = tx.update(g_e, state, task_grads=g_t)
    seen += [np.ravel(x) for x in jax.tree.leaves(update)]
    seen += [np.ravel(x) for x in jax.tree.leaves(find_combiner_state(state).gate)]
  return np.concatenate(seen)


def _set(config, dotted_key, value):
  *groups, key = dotted_key.split(".")
  for group in groups:
    config = config[group]
  config[key] = value


def keys_not_reaching_combiner(spec: methods.MethodSpec) -> list[str]:
  """The config keys of ``spec`` (its group's, and those it forwards) that, changed, do not reach the
  factory argument of their name or leave the built combiner's behaviour unchanged."""
  config = base_config()
  config.method = spec.name
  keys = set(spec.combiner_args.values())
  if spec.config_group is not None:
    keys |= {f"{spec.config_group}.{key}" for key in config[spec.config_group].keys()}
  missing = sorted(keys - set(OTHER_VALUES))
  if missing:
    pytest.fail(f"give OTHER_VALUES a non-default value for {missing}")
  default_kwargs = run_spec.combiner_kwargs(config)
  default_behaviour = _behaviour(methods.build_combiner(run_spec.parse_method(config)))
  not_reaching = []
  for key in sorted(keys):
    changed = base_config()
    changed.method = spec.name
    _set(changed, key, OTHER_VALUES[key])
    kwargs = run_spec.combiner_kwargs(changed)
    behaviour = _behaviour(methods.build_combiner(run_spec.parse_method(changed)))
    # By convention a key feeds the factory argument of its own name (gradprom.mode -> mode).
    forwarded = kwargs.get(key.rsplit(".", 1)[-1]) == OTHER_VALUES[key] and kwargs != default_kwargs
    acts = behaviour.shape != default_behaviour.shape or not np.allclose(behaviour,
                                                                         default_behaviour)
    if not (forwarded and acts):
      not_reaching.append(key)
  return not_reaching


@pytest.mark.parametrize("spec", [s for s in methods.METHOD_SPECS if s.combiner is not None],
                         ids=lambda spec: spec.name)
def test_every_method_option_reaches_the_combiner(spec):
  assert keys_not_reaching_combiner(spec) == []


def test_an_option_declared_but_not_forwarded_is_caught(monkeypatch):
  gradprom_spec = methods.method_spec("gradprom")
  forgetful = dataclasses.replace(gradprom_spec, combiner_args={
      argument: key for argument, key in gradprom_spec.combiner_args.items()
      if key != "gradprom.threshold"})
  monkeypatch.setattr(methods, "METHOD_SPECS", tuple(
      forgetful if s.name == "gradprom" else s for s in methods.METHOD_SPECS))
  assert keys_not_reaching_combiner(forgetful) == ["gradprom.threshold"]


def test_an_option_forwarded_to_the_wrong_argument_is_caught(monkeypatch):
  gradprom_spec = methods.method_spec("gradprom")
  crossed = dataclasses.replace(gradprom_spec, combiner_args={
      **gradprom_spec.combiner_args, "threshold": "gradprom.cosine_ema",
      "cosine_ema": "gradprom.threshold"})
  monkeypatch.setattr(methods, "METHOD_SPECS", tuple(
      crossed if s.name == "gradprom" else s for s in methods.METHOD_SPECS))
  assert keys_not_reaching_combiner(crossed) == ["gradprom.cosine_ema", "gradprom.threshold"]


def test_the_config_methods_and_combiners_come_from_the_table():
  assert METHODS == ("gradprom", "joint", "pcgrad", "enhance_only", "two_stage", "random_gate",
                     "recognizer_only")
  assert tuple(COMBINERS) == ("gradprom", "joint", "pcgrad", "enhance_only", "random_gate")
  assert all(COMBINERS[s.name] is s.combiner for s in methods.METHOD_SPECS if s.combiner)


@pytest.mark.parametrize("measure_cosine", [False, True])
def test_each_method_trains_the_enhancer_as_before(measure_cosine):
  summed, enhancement = ("separate", "separate") if measure_cosine else ("summed", "enhancement")
  expected = {"gradprom": ["separate"], "joint": [summed], "pcgrad": ["separate"],
              "enhance_only": [enhancement], "random_gate": ["separate"],
              "two_stage": ["enhancement", "none"], "recognizer_only": ["none"]}
  config = base_config()
  config.measure_baseline_cosine = measure_cosine
  for method in METHODS:
    config.method = method
    assert [p.enhancer_gradient for p in phases_from_config(config)] == expected[method], method


def test_the_enhancer_optimiser_holds_the_configured_combiner():
  config = base_config()
  config.gradprom.mode = "soft"
  tx = enhancer_tx_from_config(config, phases_from_config(config))
  g_e, g_t = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([1.0, 1.0])}
  _, state = tx.update(g_e, tx.init(g_e), g_e, task_grads=g_t)
  # A soft gate weighs g_t by the cosine (a hard one would log 1).
  assert float(find_combiner_metrics(state)["gate"]) == pytest.approx(2 ** -0.5, abs=1e-6)
  config.method = "joint"   # one summed pull-back: no combiner in the chain
  tx = enhancer_tx_from_config(config, phases_from_config(config))
  assert find_combiner_state(tx.init(g_e)) is None


def test_a_spec_refuses_inconsistent_declarations():
  with pytest.raises(ValueError, match="needs a combiner"):
    methods.MethodSpec("gradnorm", "…", enhancer_gradient="separate")
  with pytest.raises(ValueError, match="only it, needs an enhancer_gradient"):
    methods.MethodSpec("gradnorm", "…")
  with pytest.raises(ValueError, match="combiner_args without a combiner"):
    methods.MethodSpec("gradnorm", "…", enhancer_gradient="summed",
                       combiner_args={"task_weight": "task_weight"})


def test_the_skeleton_counts_logs_and_checks_for_its_rule():
  # The rule gives the term added to g_e: here count·g_t.
  scaled = make_combiner("scaled", lambda e, t, count, task: (jax.tree.map(lambda y: count * y, t),
                                                             jnp.float32(count > 0)))
  g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])
  state = scaled.init(g_e)
  first, state = scaled.update(g_e, state, task_grads=g_t)
  second, state = scaled.update(g_e, state, task_grads=g_t)
  np.testing.assert_allclose(first, [1.0, 0.0])
  np.testing.assert_allclose(second, [2.0, 1.0])
  assert (int(state.count), int(state.promoted)) == (2, 1)
  assert float(state.cosine) == pytest.approx(2 ** -0.5)
  with pytest.raises(ValueError, match="scaled needs the task gradient"):
    scaled.update(g_e, state)
  with pytest.raises(ValueError, match="scaled: task_grads must have the same tree structure"):
    scaled.update(g_e, state, task_grads={"w": g_t})


def test_metrics_read_per_leaf_from_the_state_structure():
  """A restored checkpoint holds NumPy arrays: the summary must not change with the array type."""
  tx = methods.COMBINER_FACTORIES["gradprom"](mode="soft")
  g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])
  _, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  restored = jax.tree.map(np.asarray, state)
  assert float(combiner_metrics(restored)["gate"]) == pytest.approx(2 ** -0.5, abs=1e-6)
  per_leaf = methods.COMBINER_FACTORIES["gradprom"](mode="soft", granularity="per_leaf")
  _, state = per_leaf.update(_G_E, per_leaf.init(_G_E), task_grads=_STEPS[1][1])
  for summarised in (state, jax.tree.map(np.asarray, state)):
    assert float(combiner_metrics(summarised)["gate"]) == 0.5   # one leaf of two open
