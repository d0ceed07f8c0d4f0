"""Gradient accumulation: k micro-batches make the update of one k times larger batch (GroupNorm
models have no batch statistics, so up to float32 rounding), and a combiner inside optax.MultiSteps
is refused."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradprom_jax.configuration.config import base_config
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.core.combiners import find_combiner_state, get_combiner
from gradprom_jax.training.train_state import create_train_state
from gradprom_jax.training.train_step import make_train_step
from gradprom_jax.training.training_spec import phases_from_config

IMAGE = (16, 16, 3)
BATCH = 8


def _config(method):
  config = base_config()
  config.method = method
  config.task.degradation = "downsample(scale=2) > gaussian_noise(sigma=0.05)"
  config.model.enhancer = {"name": "edsr", "features": 4, "num_blocks": 1}
  config.model.recognizer = {"name": "unet_segmenter", "features": 4, "num_levels": 2}
  return config


def _sgd(learning_rate):
  # Plain SGD at a constant rate: the update is proportional to the gradient, so a wrong scale or a
  # wrong micro-batch shows (Adam's first step is ~ lr·sign(g), and the warm-up starts at 0).
  return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)


def _step_and_state(method, accumulate_steps):
  config = _config(method)
  system = system_from_config(config, channels=IMAGE[-1], num_classes=2)
  phase = phases_from_config(config)[0]
  combiner = ([get_combiner(method, task_weight=1.0)] if phase.enhancer_gradient == "separate"
              else [])
  enhancer_tx, recognizer_tx = optax.chain(*combiner, _sgd(0.5)), optax.chain(_sgd(0.5))
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0), IMAGE)
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  step = jax.jit(make_train_step(system, phase, enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight=1.0,
                                 accumulate_steps=accumulate_steps))
  return step, state


def _batch():
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(BATCH, *IMAGE)).astype(np.float32)
  return {"image": image, "mask": (image[..., 0] > 0.5).astype(np.int32)}


def _assert_close(a, b, what):
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(b))
  assert scale > 0, f"{what}: nothing moved, the comparison would be vacuous"
  for (path, x), y in zip(jax.tree.leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * scale,
                               err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("method", ["gradprom", "joint"])
def test_micro_batches_give_the_update_of_one_large_batch(method):
  whole_step, state = _step_and_state(method, accumulate_steps=1)
  micro_step, _ = _step_and_state(method, accumulate_steps=4)
  before = jax.tree.map(np.asarray, state)
  whole, whole_metrics = whole_step(state, _batch())
  micro, micro_metrics = micro_step(jax.tree.map(jnp.asarray, before), _batch())

  for name in ("enhancer_params", "recognizer_params"):
    delta = lambda s: jax.tree.map(lambda new, old: np.asarray(new) - old, getattr(s, name),
                                   getattr(before, name))
    _assert_close(delta(micro), delta(whole), name)
  for key in ("enhancement_loss", "task_loss", "enhancement_grad_norm"):
    np.testing.assert_allclose(micro_metrics[key], whole_metrics[key], rtol=1e-5, err_msg=key)
  if method == "gradprom":   # One decision, on the accumulated gradients.
    micro_combiner = find_combiner_state(micro.enhancer_opt_state)
    whole_combiner = find_combiner_state(whole.enhancer_opt_state)
    assert int(micro_combiner.count) == 1
    np.testing.assert_allclose(micro_combiner.cosine, whole_combiner.cosine, rtol=1e-4, atol=1e-6)
    assert float(micro_combiner.gate) == float(whole_combiner.gate)


def test_combiner_inside_multisteps_is_refused():
  config = _config("gradprom")
  system = system_from_config(config, channels=IMAGE[-1], num_classes=2)
  phase = phases_from_config(config)[0]
  enhancer_tx = optax.MultiSteps(optax.chain(get_combiner("gradprom"), _sgd(0.5)),
                                 every_k_schedule=2).gradient_transformation()
  recognizer_tx = optax.chain(_sgd(0.5))
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0), IMAGE)
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  step = make_train_step(system, phase, enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
                         task_weight=1.0)
  with pytest.raises(ValueError, match="wrapped in optax.MultiSteps"):
    jax.jit(step)(state, _batch())


def test_batch_must_split_into_micro_batches_on_every_device():
  config = base_config()
  config.batch_size, config.accumulate_steps = 8, 4
  validate_config(config, num_devices=2)
  with pytest.raises(ConfigError, match="accumulate_steps=4"):
    validate_config(config, num_devices=4)
  config.accumulate_steps = 0
  with pytest.raises(ConfigError, match="accumulate_steps=0"):
    validate_config(config, num_devices=1)
