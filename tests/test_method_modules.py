"""A new combination method is one module: registered, it shows up in ``base_config()``, ``--help``,
validation and the defaults a stored run's config lacks, and it trains, with no other file edited.

The toy method below is written as a module of ``gradprom_jax/methods/`` would be: a pure optax
combiner with one option of its own, its config group, its check, and ``METHOD``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gradprom_jax import methods
from gradprom_jax.configuration import config as config_lib
from gradprom_jax.configuration.config_help import describe_config
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.configuration.run_spec import parse_method
from gradprom_jax.core.combiners.skeleton import make_combiner
from gradprom_jax.core.combiners.tasks import resolve_tasks
from gradprom_jax.methods import registry
from gradprom_jax.methods.method import Method, check_fraction
from gradprom_jax.training.run_config import config_differences
from gradprom_jax.training.train_step import make_train_step

from test_train_step import make_batch, setup, tiny_config  # noqa: E402


# --- the toy method module -------------------------------------------------------------------------
def damped(task_weight=1.0, damping=0.5, *, tasks=None):
  """g_e + damping · λ g_t."""
  resolved = resolve_tasks(tasks, task_weight=task_weight)
  weights = resolved.option("task_weight", task_weight)

  def rule(updates, task_grads, count, task):
    del updates, count
    return (jax.tree.map(lambda t: damping * weights[task] * t, task_grads),
            jnp.float32(damping))

  return make_combiner("damped", rule, tasks=resolved)


def options() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # How much of λ g_t the enhancer's update takes: 0 none, 1 all of it (joint training).
  config.damping = 0.5
  return config


def check(options: ml_collections.ConfigDict) -> None:
  check_fraction("damped.damping", options.damping)


METHOD = Method("damped", "g_e + damping · λ g_t (a toy)", damped, "separate", options=options,
                check=check)
# ----------------------------------------------------------------------------------------------------


@pytest.fixture
def registered(monkeypatch):
  """The toy method registered for one test (the registry restored after it)."""
  monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
  return methods.register(METHOD)


def test_a_registered_method_is_a_config_method_with_its_group(registered):
  config = config_lib.base_config()
  assert "damped" in config_lib.METHODS and "damped" in methods.COMBINERS
  assert config.damped.damping == 0.5
  assert parse_method(config).name == "gradprom"
  config.method = "damped"
  assert dict(parse_method(config).combiner_kwargs) == {"task_weight": 1.0, "damping": 0.5}


def test_a_registered_method_is_in_the_help_with_its_comments(registered):
  listing = describe_config(config_lib.base_config())   # what --help prints under its docstring
  assert "damped: g_e + damping · λ g_t (a toy)." in " ".join(listing.split())
  assert ("# How much of λ g_t the enhancer's update takes: 0 none, 1 all of it (joint training).\n"
          "  damped.damping = 0.5") in listing


def test_a_registered_method_checks_its_options(registered):
  config = config_lib.base_config()
  config.method = "damped"
  assert validate_config(config).names == ("segmentation",)
  config.damped.damping = 1.5
  with pytest.raises(ConfigError, match=r"damped.damping=1.5 must be in \[0, 1\]"):
    validate_config(config)


def test_a_stored_run_config_without_the_new_group_holds_its_default(registered):
  stored = config_lib.base_config().to_dict()
  del stored["damped"]   # a run made before the method existed
  config = config_lib.base_config()
  assert config_differences(stored, config) == []
  config.damped.damping = 0.25
  assert config_differences(stored, config) == ["damped.damping: 0.5 -> 0.25"]


def test_a_registered_method_trains_a_step_with_its_option(registered):
  config = tiny_config("damped")
  updates = []
  for damping in (0.0, 1.0):
    config.damped.damping = damping
    system, phases, enhancer_tx, recognizer_tx, state = setup(config)
    assert [p.enhancer_gradient for p in phases] == ["separate"]
    step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                   recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
    state, _ = step(state, make_batch(0))   # warm-up: the first learning rate is 0
    state, metrics = step(state, make_batch(1))
    assert float(metrics["gate"]) == damping and np.isfinite(float(metrics["enhancement_loss"]))
    updates.append(jax.tree.leaves(state.enhancer_params))
  # The option reaches the update: no task gradient at damping 0, all of it at 1.
  assert not all(np.array_equal(a, b) for a, b in zip(*updates))


def test_without_registration_the_toy_is_unknown():
  assert "damped" not in config_lib.METHODS and "damped" not in config_lib.base_config()
