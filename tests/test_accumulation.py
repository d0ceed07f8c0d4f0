"""Gradient accumulation: k micro-batches make the update of one k times larger batch (GroupNorm
models have no batch statistics, so up to float32 rounding), a combiner inside optax.MultiSteps
is refused, and gradprom_jax.multi_steps averages task_grads as the train step does."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradprom_jax.configuration.config import base_config
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax import multi_steps
from gradprom_jax.core.combiners import find_combiner_state, gradprom
from gradprom_jax.methods import get_combiner
from gradprom_jax.training.gradient_accumulation import accumulate_gradients
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
  combiner = ([get_combiner(method, task_weight=1.0, tasks=system.task_names)]
              if phase.enhancer_gradient == "separate" else [])
  enhancer_tx, recognizer_tx = optax.chain(*combiner, _sgd(0.5)), optax.chain(_sgd(0.5))
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0), IMAGE)
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  step = jax.jit(make_train_step(system, phase, enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0),
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
                         task_weight=dict.fromkeys(system.task_names, 1.0))
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


def test_multi_steps_gates_on_the_mean_task_gradient():
  # The last micro-batch's g_t (1, 1) agrees with g_e; the mean g_t (-1, 1) does not.
  tx = multi_steps(optax.chain(gradprom(), optax.sgd(1.0)), every_k_schedule=2)
  params = jnp.zeros(2)
  state = tx.init(params)
  g_e = jnp.array([1.0, 0.0])
  update, state = tx.update(g_e, state, params, task_grads=jnp.array([-3.0, 1.0]))
  np.testing.assert_array_equal(update, [0.0, 0.0])
  update, state = tx.update(g_e, state, params, task_grads=jnp.array([1.0, 1.0]))
  np.testing.assert_array_equal(update, [-1.0, 0.0])
  assert float(find_combiner_state(state).gate) == 0.0


@pytest.mark.parametrize("combiner", ["gradprom", "joint", "pcgrad"])
@pytest.mark.parametrize("jit", [False, True])
def test_combiner_inside_optax_multisteps_refuses_and_names_the_wrapper(combiner, jit):
  tx = optax.MultiSteps(optax.chain(get_combiner(combiner), optax.sgd(1.0)), every_k_schedule=2)
  params = jnp.zeros(2)
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(ValueError, match=r"optax.MultiSteps.*gradprom_jax.multi_steps"):
    update(jnp.ones(2), tx.init(params), params, task_grads=jnp.ones(2))


def _micro_batch_gradients(tasks):
  rng = np.random.default_rng(1)
  tree = lambda: {"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                  "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}
  return [(tree(), tree() if tasks is None else {name: tree() for name in tasks})
          for _ in range(4)]


@pytest.mark.parametrize("tasks", [None, ("diagnosis", "masks")])
def test_multi_steps_is_the_train_steps_accumulation(tasks):
  # The train step averages g_e and g_t over its micro-batches (accumulate_gradients) and updates
  # once; multi_steps fed the same micro-batches one call each emits that update, twice running.
  tx = optax.chain(gradprom(granularity="per_leaf", tasks=tasks), optax.adam(0.1))
  params = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,))}
  wrapped = multi_steps(tx, every_k_schedule=4, tasks=tasks)
  state, wrapped_state = tx.init(params), wrapped.init(params)
  for cycle in range(2):
    micro = _micro_batch_gradients(tasks)
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *micro)   # micro-batch i holds entry i
    mean_g_e, mean_g_t = accumulate_gradients(lambda m: jax.tree.map(lambda x: x[0], m), stacked, 4)
    expected, state = tx.update(mean_g_e, state, params, task_grads=mean_g_t)
    for g_e, g_t in micro:
      update, wrapped_state = wrapped.update(g_e, wrapped_state, params, task_grads=g_t)
    for a, b in zip(jax.tree.leaves(update), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"cycle {cycle}")
    inner = wrapped_state.inner_opt_state
    for a, b in zip(jax.tree.leaves(inner), jax.tree.leaves(state)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"cycle {cycle}")
