"""The method registry: what is derived from it, and that every method option reaches the combiner."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax import COMBINERS, methods
from gradprom_jax.configuration import run_spec
from gradprom_jax.configuration.config import (METHODS, base_config, classification_recognizer,
                                               multitask_config)
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.configuration.plain_config import flatten_config
from gradprom_jax.core.combiners import (combiner_metrics, find_combiner_metrics, find_combiner_state,
                                         gradprom)
from gradprom_jax.core.combiners.skeleton import make_combiner
from gradprom_jax.methods import registry
from gradprom_jax.training.train_step import make_train_step
from gradprom_jax.training.training_spec import enhancer_tx_from_config, phases_from_config

from test_train_step import make_batch, setup, tiny_config  # noqa: E402

# A value other than the default for config keys a combiner reads. A number or a flag without one
# here is moved off its default (`other_value`); a string needs one (or its method's test passes it).
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


def other_value(key: str, default, other_values=OTHER_VALUES):
  """``other_values[key]``, or beside a number's or a flag's ``default``."""
  if key in other_values:
    return other_values[key]
  if isinstance(default, bool):
    return not default
  if isinstance(default, (int, float)):
    return default + (1 if isinstance(default, int) else 0.5)
  pytest.fail(f"give OTHER_VALUES a non-default value for {key}={default!r}")


def keys_not_reaching_combiner(method: methods.Method, other_values=OTHER_VALUES) -> list[str]:
  """The config keys of ``method`` (its group's, and those it forwards) that, changed (to
  :func:`other_value`), do not reach the factory argument of their name or leave the built
  combiner's behaviour unchanged."""
  config = base_config()
  config.method = method.name
  keys = set(method.combiner_args.values())
  if method.options is not None:
    keys |= {f"{method.name}.{key}" for key in config[method.name].keys()}
  flat = flatten_config(config)
  values = {key: other_value(key, flat[key], other_values) for key in keys}
  default_kwargs = run_spec.combiner_kwargs(config)
  default_behaviour = _behaviour(methods.build_combiner(run_spec.parse_method(config)))
  not_reaching = []
  for key in sorted(keys):
    changed = base_config()
    changed.method = method.name
    _set(changed, key, values[key])
    kwargs = run_spec.combiner_kwargs(changed)
    behaviour = _behaviour(methods.build_combiner(run_spec.parse_method(changed)))
    # By convention a key feeds the factory argument of its own name (gradprom.mode -> mode).
    forwarded = kwargs.get(key.rsplit(".", 1)[-1]) == values[key] and kwargs != default_kwargs
    acts = behaviour.shape != default_behaviour.shape or not np.allclose(behaviour,
                                                                         default_behaviour)
    if not (forwarded and acts):
      not_reaching.append(key)
  return not_reaching


@pytest.mark.parametrize("method", methods.combination_methods(), ids=lambda method: method.name)
def test_every_method_option_reaches_the_combiner(method):
  assert keys_not_reaching_combiner(method) == []


def test_an_option_the_combiner_ignores_is_caught(monkeypatch):
  def gradprom_ignoring_threshold(threshold=0.0, **kwargs):
    del threshold
    return gradprom(**kwargs)

  forgetful = dataclasses.replace(methods.lookup("gradprom"), combiner=gradprom_ignoring_threshold)
  monkeypatch.setitem(registry._METHODS, "gradprom", forgetful)
  assert keys_not_reaching_combiner(forgetful) == ["gradprom.threshold"]


def test_the_config_methods_and_combiners_come_from_the_registry():
  combining = tuple(m.name for m in methods.combination_methods())
  assert combining == tuple(sorted(combining))   # module-name order
  assert {"enhance_only", "gradprom", "joint", "pcgrad", "random_gate"} <= set(combining)
  assert METHODS == (*combining, "two_stage", "recognizer_only")
  assert tuple(COMBINERS) == combining
  assert all(COMBINERS[m.name] is m.combiner for m in methods.combination_methods())
  assert ([k for k in base_config() if k in METHODS]
          == [m.name for m in methods.combination_methods() if m.options is not None])


@pytest.mark.parametrize("method", methods.combination_methods(), ids=lambda method: method.name)
def test_every_method_builds_for_several_tasks(method):
  config = multitask_config(base_config(), {"segmentation": base_config().model.recognizer,
                                            "classification": classification_recognizer()})
  config.method = method.name
  config.measure_baseline_cosine = True   # the combiner in the chain for joint and enhance_only too
  assert validate_config(config).names == ("segmentation", "classification")
  tx = enhancer_tx_from_config(config, phases_from_config(config))
  g_e = {"w": jnp.array([1.0, 0.0])}
  g_t = {"segmentation": {"w": jnp.array([1.0, 1.0])}, "classification": {"w": jnp.array([0.0, 1.0])}}
  update, state = tx.update(g_e, tx.init(g_e), g_e, task_grads=g_t)
  assert np.all(np.isfinite(update["w"]))
  assert set(find_combiner_metrics(state)) >= {"gate/segmentation", "gate/classification"}


def one_task_variants(method: methods.Method) -> list[tuple[str, object]]:
  """(dotted key, value) pairs: the defaults (``("", None)``), then each of ``method``'s keys
  moved off its default, one at a time."""
  config = base_config()
  config.method = method.name
  flat = flatten_config(config)
  keys = sorted(set(method.combiner_args.values()))
  return [("", None)] + [(key, other_value(key, flat[key])) for key in keys]


@pytest.mark.parametrize("method", methods.combination_methods(), ids=lambda method: method.name)
def test_a_one_task_dict_updates_bitwise_as_the_bare_tree(method):
  """The train step gives the combiner built for the config's tasks a dict by task name, one entry
  for one task: its updates, state and (plain-keyed) metrics are bitwise the single-tree form's."""
  for key, value in one_task_variants(method):
    config = base_config()
    config.method = method.name
    if key:
      _set(config, key, value)
    spec = run_spec.parse_run_config(config)
    bare, by_name = methods.build_combiner(spec.method), methods.build_combiner(spec.method, spec.tasks)
    bare_update, by_name_update = jax.jit(bare.update), jax.jit(by_name.update)
    bare_state, by_name_state = bare.init(_G_E), by_name.init(_G_E)
    for g_e, g_t in _STEPS:
      d_bare, bare_state = bare_update(g_e, bare_state, task_grads=g_t)
      d_by_name, by_name_state = by_name_update(g_e, by_name_state,
                                                task_grads={"segmentation": g_t})
      assert jax.tree.structure(d_bare) == jax.tree.structure(d_by_name)
      for a, b in zip(jax.tree.leaves((d_bare, bare_state)),
                      jax.tree.leaves((d_by_name, by_name_state.tasks["segmentation"]))):
        np.testing.assert_array_equal(a, b, err_msg=f"{method.name} {key}={value}")
      plain = find_combiner_metrics(by_name_state, suffixed=False)
      assert plain.keys() == find_combiner_metrics(bare_state).keys()
      for name, metric in find_combiner_metrics(bare_state).items():
        np.testing.assert_array_equal(plain[name], metric, err_msg=f"{method.name} {name}")


def trains_a_step(name: str) -> dict:
  """Two train steps of method ``name`` on test_train_step's tiny config; asserts that both models
  change and the losses are finite; returns the second step's metrics."""
  system, phases, enhancer_tx, recognizer_tx, state = setup(tiny_config(name))
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
  new_state, _ = step(state, make_batch(0))   # warm-up: the first learning rate is 0
  new_state, metrics = step(new_state, make_batch(1))
  for old, new in ((state.enhancer_params, new_state.enhancer_params),
                   (state.recognizer_params, new_state.recognizer_params)):
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
  assert np.isfinite(float(metrics["enhancement_loss"])) and np.isfinite(float(metrics["task_loss"]))
  return metrics


def refusal(name: str, overrides: dict) -> str:
  """The ConfigError message for method ``name`` with ``overrides`` (dotted key -> value)."""
  config = base_config()
  config.method = name
  for key, value in overrides.items():
    _set(config, key, value)
  with pytest.raises(ConfigError) as error:
    validate_config(config)
  return str(error.value)


@pytest.mark.parametrize("measure_cosine", [False, True])
def test_each_method_trains_the_enhancer_as_before(measure_cosine):
  summed, enhancement = ("separate", "separate") if measure_cosine else ("summed", "enhancement")
  expected = {"gradprom": ["separate"], "joint": [summed], "pcgrad": ["separate"],
              "enhance_only": [enhancement], "random_gate": ["separate"],
              "two_stage": ["enhancement", "none"], "recognizer_only": ["none"]}
  config = base_config()
  config.measure_baseline_cosine = measure_cosine
  for method in expected:
    config.method = method
    assert [p.enhancer_gradient for p in phases_from_config(config)] == expected[method], method


def test_the_enhancer_optimiser_holds_the_configured_combiner():
  config = base_config()
  config.gradprom.mode = "soft"
  tx = enhancer_tx_from_config(config, phases_from_config(config))
  g_e, g_t = {"w": jnp.array([1.0, 0.0])}, {"w": jnp.array([1.0, 1.0])}
  _, state = tx.update(g_e, tx.init(g_e), g_e, task_grads={"segmentation": g_t})
  # A soft gate weighs g_t by the cosine (a hard one would log 1).
  assert float(find_combiner_metrics(state)["gate/segmentation"]) == pytest.approx(2 ** -0.5,
                                                                                  abs=1e-6)
  config.method = "joint"   # one summed pull-back: no combiner in the chain
  tx = enhancer_tx_from_config(config, phases_from_config(config))
  assert find_combiner_state(tx.init(g_e)) is None


def test_a_method_refuses_an_unknown_gradient_and_the_registry_a_taken_name():
  with pytest.raises(ValueError, match="enhancer_gradient='both' is not one of"):
    methods.Method("gradnorm", "…", gradprom, "both")
  for taken in ("joint", "two_stage"):
    with pytest.raises(ValueError, match=f"'{taken}' is already registered"):
      methods.register(methods.Method(taken, "…", gradprom))
  assert methods.method_names().count("joint") == 1


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
  tx = COMBINERS["gradprom"](mode="soft")
  g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])
  _, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  restored = jax.tree.map(np.asarray, state)
  assert float(combiner_metrics(restored)["gate"]) == pytest.approx(2 ** -0.5, abs=1e-6)
  per_leaf = COMBINERS["gradprom"](mode="soft", granularity="per_leaf")
  _, state = per_leaf.update(_G_E, per_leaf.init(_G_E), task_grads=_STEPS[1][1])
  for summarised in (state, jax.tree.map(np.asarray, state)):
    assert float(combiner_metrics(summarised)["gate"]) == 0.5   # one leaf of two open
