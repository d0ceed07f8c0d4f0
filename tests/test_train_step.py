"""The train step: shared-forward gradients, phases, non-finite skipping, and data parallelism."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradprom_jax.configuration.config import base_config
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.core.combiners import MultiTaskState, gradprom
from gradprom_jax.training.parallel import DataParallel
from gradprom_jax.training.train_state import create_train_state
from gradprom_jax.training.train_step import make_train_step, shared_forward_gradients
from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                 recognizer_tx_from_config)

IMAGE = (16, 16, 3)


def tiny_config(method="gradprom", recognition="segmentation", **overrides):
  config = base_config()
  config.method = method
  config.num_train_steps = 20
  config.task.recognition = recognition
  config.task.degradation = "downsample(scale=2) > gaussian_noise(sigma=0.05)"
  config.model.enhancer = {"name": "edsr", "features": 4, "num_blocks": 1}
  if recognition == "segmentation":
    config.model.recognizer = {"name": "unet_segmenter", "features": 4, "num_levels": 2}
  else:
    config.model.recognizer = {"name": "resnet", "features": 4, "stage_sizes": (1,)}
  config.optim.warmup_steps = 1
  for key, value in overrides.items():
    config[key] = value
  return config


def make_batch(seed, batch_size=8, recognition="segmentation"):
  rng = np.random.default_rng(seed)
  batch = {"image": rng.uniform(size=(batch_size, *IMAGE)).astype(np.float32)}
  if recognition == "segmentation":
    batch["mask"] = (batch["image"][..., 0] > 0.5).astype(np.int32)
  else:
    batch["label"] = rng.integers(0, 3, size=batch_size).astype(np.int32)
  return batch


def setup(config, num_classes=2):
  system = system_from_config(config, channels=IMAGE[-1], num_classes=num_classes)
  phases = phases_from_config(config)
  enhancer_tx = enhancer_tx_from_config(config, phases)
  recognizer_tx = recognizer_tx_from_config(config, phases)
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0), IMAGE)
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  return system, phases, enhancer_tx, recognizer_tx, state


def test_shared_forward_gradients_equal_two_separate_grads():
  config = tiny_config()
  system, _, _, _, state = setup(config)
  batch = jax.tree.map(jnp.asarray, make_batch(0))
  low_quality = system.degrade(jax.random.key(1), batch["image"], jnp.arange(8))
  out = jax.jit(shared_forward_gradients, static_argnums=0)(
      system, state.enhancer_params, state.recognizer_params, low_quality, batch)

  def enhancement_loss(theta):
    return system.enhancement_loss(system.enhance(theta, low_quality, train=True), batch["image"])

  (head,) = system.heads
  def task_loss(theta, phi):
    enhanced = system.enhance(theta, low_quality, train=True)
    return head.loss(head.recognize(phi, enhanced, train=True), batch)

  g_e = jax.jit(jax.grad(enhancement_loss))(state.enhancer_params)
  g_t, g_phi = jax.jit(jax.grad(task_loss, argnums=(0, 1)))(
      state.enhancer_params, state.recognizer_params["segmentation"])
  # A single task's values sit under its name, as each of several tasks' do.
  assert list(out["task_grads"]) == list(out["recognizer_grads"]) == ["segmentation"]
  g_t, g_phi = {"segmentation": g_t}, {"segmentation": g_phi}
  for name, expected in (("enhancement_grads", g_e), ("task_grads", g_t), ("recognizer_grads", g_phi)):
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(expected))
    for a, b in zip(jax.tree.leaves(out[name]), jax.tree.leaves(expected)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
  assert float(out["enhancement_loss"]) == pytest.approx(float(enhancement_loss(state.enhancer_params)), rel=1e-6)


def test_a_single_tasks_values_are_dicts_by_its_name_and_its_keys_plain():
  """Per-task values are dicts by task name for one task too; only the keys users read say
  whether the run is of the multi-task form (``dice/<task>``) or not (``dice``)."""
  system, phases, enhancer_tx, recognizer_tx, state = setup(tiny_config())
  assert not system.multi_task and system.num_classes == {"segmentation": 2}
  is_multi = lambda x: isinstance(x, MultiTaskState)
  (combiner_state,) = [s for s in jax.tree.leaves(state.enhancer_opt_state, is_leaf=is_multi)
                       if is_multi(s)]
  assert list(combiner_state.tasks) == ["segmentation"]
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight={"segmentation": 1.0}))
  state, metrics = step(state, make_batch(0))
  assert list(state.recognizer_params) == list(state.recognizer_opt_state) == ["segmentation"]
  batch = jax.tree.map(jnp.asarray, make_batch(1))
  out = shared_forward_gradients(system, state.enhancer_params, state.recognizer_params,
                                 batch["image"][:, ::2, ::2], batch)
  for name in ("task_loss", "task_grads", "recognizer_grads"):
    assert list(out[name]) == ["segmentation"], name
  assert {"task_loss", "task_grad_norm", "cosine", "gate", "gate_open_rate"} <= set(metrics)
  assert not [key for key in metrics if "/" in key]


def test_shared_forward_runs_the_enhancer_forward_once():
  """Counted in the jaxpr: one enhancer forward (its first conv appears once among forward convs)."""
  config = tiny_config()
  system, _, _, _, state = setup(config)
  batch = jax.tree.map(jnp.asarray, make_batch(0))
  low_quality = system.degrade(jax.random.key(1), batch["image"], jnp.arange(8))
  # The forward of the enhancer's first conv is the one conv of the low-quality input with a
  # (3, 3, channels, features) kernel; a second forward pass would add another.
  jaxpr = jax.make_jaxpr(lambda e, r: shared_forward_gradients(system, e, r, low_quality, batch))(
      state.enhancer_params, state.recognizer_params)
  kernel_shape = (3, 3, IMAGE[-1], config.model.enhancer.features)
  first_layer_forwards = [
      eqn for eqn in jaxpr.eqns if eqn.primitive.name == "conv_general_dilated"
      and eqn.invars[0].aval.shape == low_quality.shape
      and eqn.invars[1].aval.shape == kernel_shape]
  assert len(first_layer_forwards) == 1

  def two_forwards(e, r):   # what the naive implementation does: the count must change
    enhancement = jax.grad(lambda t: system.enhancement_loss(
        system.enhance(t, low_quality, train=True), batch["image"]))(e)
    (head,) = system.heads
    task = jax.grad(lambda t: head.loss(head.recognize(
        r["segmentation"], system.enhance(t, low_quality, train=True), train=True), batch))(e)
    return enhancement, task
  naive = jax.make_jaxpr(two_forwards)(state.enhancer_params, state.recognizer_params)
  assert len([eqn for eqn in naive.eqns if eqn.primitive.name == "conv_general_dilated"
              and eqn.invars[0].aval.shape == low_quality.shape
              and eqn.invars[1].aval.shape == kernel_shape]) == 2


@pytest.mark.parametrize("method, gradient", [("gradprom", "separate"), ("pcgrad", "separate"),
                                              ("joint", "summed"), ("enhance_only", "enhancement")])
def test_every_method_trains_both_models_and_logs(method, gradient):
  config = tiny_config(method)
  system, phases, enhancer_tx, recognizer_tx, state = setup(config)
  assert phases[-1].enhancer_gradient == gradient
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
  new_state, _ = step(state, make_batch(0))   # warm-up: the first learning rate is 0
  new_state, metrics = step(new_state, make_batch(1))
  assert int(new_state.step) == 2
  assert float(metrics["enhancer_lr"]) > 0 and float(metrics["recognizer_lr"]) > 0
  for old, new in ((state.enhancer_params, new_state.enhancer_params),
                   (state.recognizer_params, new_state.recognizer_params)):
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
  assert np.isfinite(float(metrics["enhancement_loss"])) and np.isfinite(float(metrics["task_loss"]))
  if gradient == "separate":
    assert {"cosine", "gate", "gate_open_rate", "task_grad_norm"} <= set(metrics)


def test_joint_summed_cotangent_equals_joint_combiner_on_separate_gradients():
  """The cheap joint step (one pull-back of the summed cotangent) is exactly g_e + λ g_t."""
  batch = make_batch(3)
  results = []
  for measure in (False, True):
    config = tiny_config("joint", task_weight=0.7)
    config.measure_baseline_cosine = measure
    system, phases, enhancer_tx, recognizer_tx, state = setup(config)
    step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                   recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 0.7)))
    results.append(step(state, batch)[0].enhancer_params)
  for a, b in zip(*map(jax.tree.leaves, results)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_two_stage_phases_update_one_model_each():
  config = tiny_config("two_stage")
  system, phases, enhancer_tx, recognizer_tx, state = setup(config)
  assert [p.name for p in phases] == ["enhancer", "recognizer"]
  for phase, frozen in zip(phases, ("recognizer_params", "enhancer_params")):
    step = jax.jit(make_train_step(system, phase, enhancer_tx=enhancer_tx,
                                   recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
    new_state, _ = step(state, make_batch(1))
    new_state, _ = step(new_state, make_batch(2))
    for a, b in zip(jax.tree.leaves(getattr(state, frozen)), jax.tree.leaves(getattr(new_state, frozen))):
      np.testing.assert_array_equal(a, b)


def test_non_finite_batch_is_skipped_and_counted():
  config = tiny_config()
  system, phases, enhancer_tx, recognizer_tx, state = setup(config)
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
  batch = make_batch(0)
  batch["image"][0, 0, 0, 0] = np.nan
  new_state, metrics = step(state, batch)
  assert float(metrics["nonfinite"]) == 1.0
  assert int(new_state.step) == 1 and int(new_state.nonfinite_streak) == 1
  for a, b in zip(jax.tree.leaves((state.enhancer_params, state.enhancer_opt_state)),
                  jax.tree.leaves((new_state.enhancer_params, new_state.enhancer_opt_state))):
    np.testing.assert_array_equal(a, b)
  new_state, _ = step(new_state, make_batch(1))
  assert int(new_state.nonfinite_streak) == 0 and int(new_state.nonfinite_total) == 1


# Classification's mesh and pmap steps are also checked against one device, class-weighted, by
# test_class_weighted_update_is_the_global_batchs_in_every_parallel_mode: -m slow here.
@pytest.mark.parametrize("recognition", [
    "segmentation", pytest.param("classification", marks=pytest.mark.slow)])
def test_mesh_and_pmap_equal_one_device(recognition):
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices")
  config = tiny_config("gradprom", recognition)
  num_classes = 2 if recognition == "segmentation" else 3
  system, phases, enhancer_tx, recognizer_tx, state = setup(config, num_classes)
  batches = [make_batch(i, recognition=recognition) for i in range(3)]

  def run(step_fn, place_state, place_batch, read):
    s = place_state(jax.tree.map(jnp.copy, state))   # steps donate their input state
    for batch in batches:
      s, _ = step_fn(s, place_batch(batch))
    return read(s)

  single = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                   recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
  expected = run(single, lambda s: jax.device_put(s, jax.devices()[0]), lambda b: b, lambda s: s)
  for mode in ("mesh", "pmap"):
    parallel = DataParallel(mode)
    step = parallel.compile_step(make_train_step(
        system, phases[-1], enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
        task_weight=dict.fromkeys(system.task_names, 1.0), axis_name=parallel.axis_name))
    got = run(step, parallel.put_state, parallel.put_batch, parallel.global_state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=mode)


@pytest.mark.parametrize("method, train_on", [("recognizer_only", "enhanced"), ("gradprom", "both")])
def test_recognizer_only_leaves_the_enhancer_alone_and_both_inputs_train(method, train_on):
  config = tiny_config()
  config.method, config.recognizer.train_on = method, train_on
  system, phases, enhancer_tx, recognizer_tx, state = setup(config)
  assert [(p.name, p.recognizer_input) for p in phases] == [
      (method, "high_quality" if method == "recognizer_only" else "both")]
  for phase in phases:
    step = jax.jit(make_train_step(system, phase, enhancer_tx=enhancer_tx,
                                   recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
    new_state, metrics = step(state, make_batch(0))
    new_state, metrics = step(new_state, make_batch(1))
    assert "task_loss_high_quality" in metrics
    enhancer_changed = not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(state.enhancer_params), jax.tree.leaves(new_state.enhancer_params)))
    assert enhancer_changed == (phase.name == "gradprom")
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(state.recognizer_params), jax.tree.leaves(new_state.recognizer_params)))


@pytest.mark.parametrize("option, logged", [
    ("cosine_ema", "cosine_ema"),
    pytest.param("gradient_ema", "moment_cosine", marks=pytest.mark.slow)])   # ~50 s to compile
def test_moving_average_state_survives_the_donated_step(option, logged):
  # The loop donates its state; XLA refuses one whose leaves share a buffer ("Attempt to donate
  # the same buffer twice"), as the cosine average's first state once did (it reused the cosine's).
  config = tiny_config()
  config.gradprom[option] = 0.9
  system, phases, enhancer_tx, recognizer_tx, state = setup(config)
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)), donate_argnums=0)
  for seed in range(2):
    state, metrics = step(state, make_batch(seed))
  assert int(state.step) == 2 and -1 <= float(metrics[logged]) <= 1


def _sgd(learning_rate):
  # Plain SGD: the update is proportional to the gradient, so a wrongly normalised loss shows.
  return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)


def _class_imbalanced_batch(recognition):
  """Labels whose mix differs between the batch's quarters, so every shard has its own Σ w."""
  batch = make_batch(0, recognition=recognition)
  if recognition == "segmentation":   # foreground fractions from ~90 % down to ~10 %
    thresholds = np.linspace(0.1, 0.9, len(batch["image"]))[:, None, None]
    batch["mask"] = (batch["image"][..., 0] > thresholds).astype(np.int32)
  else:
    batch["label"] = np.array([0, 0, 0, 1, 2, 2, 1, 0], np.int32)
  return batch


@pytest.mark.parametrize("recognition, class_weights", [
    ("classification", (0.2, 1.0, 3.0)),
    pytest.param("segmentation", (1.0, 4.0), marks=pytest.mark.slow)])
def test_class_weighted_update_is_the_global_batchs_in_every_parallel_mode(recognition,
                                                                           class_weights):
  # Σ w·ℓ / Σ w over the whole batch, whether it runs on 1 or 4 devices (mesh or pmap) or as 4
  # micro-batches: a per-part ratio averaged over the parts would differ.
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices")
  config = tiny_config("gradprom", recognition)
  system = system_from_config(config, channels=IMAGE[-1], num_classes=len(class_weights),
                              class_weights=class_weights)
  phase = phases_from_config(config)[-1]
  enhancer_tx, recognizer_tx = optax.chain(gradprom(tasks=system.task_names), _sgd(0.5)), _sgd(0.5)
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0), IMAGE)
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  batch = _class_imbalanced_batch(recognition)

  def run(mode, accumulate_steps):
    parallel = DataParallel(mode) if mode else None
    step_fn = make_train_step(system, phase, enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
                              task_weight=dict.fromkeys(system.task_names, 1.0), accumulate_steps=accumulate_steps,
                              axis_name=parallel and parallel.axis_name)
    s = jax.tree.map(jnp.copy, state)   # steps donate their input state
    if parallel is None:
      new, metrics = jax.jit(step_fn)(jax.device_put(s, jax.devices()[0]), batch)
      return new, metrics
    new, metrics = parallel.compile_step(step_fn)(parallel.put_state(s), parallel.put_batch(batch))
    return parallel.global_state(new), parallel.metrics_to_host(metrics)

  expected, expected_metrics = run(None, 1)
  moved = lambda s: jax.tree.map(lambda new, old: np.asarray(new) - np.asarray(old),
                                 (s.enhancer_params, s.recognizer_params),
                                 (state.enhancer_params, state.recognizer_params))
  scale = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(moved(expected)))
  assert scale > 0
  for mode, accumulate_steps in ((None, 4), ("mesh", 1), ("pmap", 1)):   # both: the slow e2e test
    got, metrics = run(mode, accumulate_steps)
    where = f"{mode or 'one device'}, accumulate_steps={accumulate_steps}"
    for key in ("task_loss", "task_grad_norm", "cosine"):
      np.testing.assert_allclose(float(metrics[key]), float(expected_metrics[key]), rtol=1e-5,
                                 atol=1e-6, err_msg=f"{key}: {where}")
    for a, b in zip(jax.tree.leaves(moved(got)), jax.tree.leaves(moved(expected))):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=where)
