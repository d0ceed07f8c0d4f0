"""Several recognition tasks on one enhancer: the config, the train step, parallel modes, checkpoints.

The multi-task step with one task must be the single-task step; joint training's one summed
cotangent must be the λ_k-weighted sum of the tasks' separate pull-backs; GradProm gates and logs
each task on its own; mesh and pmap give the one-device result.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gradprom_jax.configuration.config import base_config, multitask_config
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.configuration.task_parsing import parse_task_config
from gradprom_jax.training.checkpointing import Checkpointer
from gradprom_jax.training.parallel import DataParallel
from gradprom_jax.training.train_state import create_train_state
from gradprom_jax.training.train_step import make_train_step, shared_forward_gradients
from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                 recognizer_tx_from_config)

from test_train_step import IMAGE, make_batch, tiny_config  # noqa: E402

SEGMENTER = {"name": "unet_segmenter", "features": 4, "num_levels": 2}
CLASSIFIER = {"name": "resnet", "features": 4, "stage_sizes": (1,)}
NUM_CLASSES = {"segmentation": 2, "classification": 3}


def two_task_config(method="gradprom", recognition="segmentation,classification", **overrides):
  config = multitask_config(tiny_config(method, **overrides),
                            {"segmentation": ml_collections.ConfigDict(SEGMENTER),
                             "classification": ml_collections.ConfigDict(CLASSIFIER)})
  config.task.recognition = recognition
  return config


def two_task_batch(seed, batch_size=8):
  batch = make_batch(seed, batch_size)
  batch["label"] = np.random.default_rng(seed + 100).integers(0, 3, size=batch_size).astype(np.int32)
  return batch


def setup(config):
  tasks = parse_task_config(config)
  num_classes = {name: NUM_CLASSES[name] for name in tasks.names}
  system = system_from_config(config, channels=IMAGE[-1], num_classes=num_classes, tasks=tasks)
  phases = phases_from_config(config)
  enhancer_tx = enhancer_tx_from_config(config, phases, tasks)
  recognizer_tx = recognizer_tx_from_config(config, phases, tasks)
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0), IMAGE)
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  step = make_train_step(system, phases[-1], enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
                         task_weight=tasks.task_weight)
  return system, tasks, state, step


def assert_trees_close(a, b, **tolerance):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


# GradProm (the per-task gate) by default; PCGrad takes its separate pull-backs, and joint's summed
# pull-back is checked below against them: both run with -m slow to keep the default suite short.
@pytest.mark.parametrize("method", ["gradprom", pytest.param("joint", marks=pytest.mark.slow),
                                    pytest.param("pcgrad", marks=pytest.mark.slow)])
def test_multitask_step_with_one_task_equals_the_single_task_step(method):
  single_system, _, single_state, single_step = setup(tiny_config(method, task_weight=0.7))
  multi_system, tasks, multi_state, multi_step = setup(
      two_task_config(method, recognition="segmentation", task_weight=0.7))
  assert tasks.multi_task and multi_system.task_names == ("segmentation",)
  # The same initial recogniser (the multi-task form keys each task's init by its index).
  multi_state = multi_state.replace(recognizer_params=single_state.recognizer_params)
  single_step, multi_step = jax.jit(single_step), jax.jit(multi_step)
  for seed in range(3):
    single_state, single_metrics = single_step(single_state, make_batch(seed))
    multi_state, multi_metrics = multi_step(multi_state, make_batch(seed))
  assert_trees_close(multi_state.enhancer_params, single_state.enhancer_params, rtol=1e-6, atol=1e-7)
  assert_trees_close(multi_state.recognizer_params, single_state.recognizer_params,
                     rtol=1e-6, atol=1e-7)
  # The same values, under the task's suffixed keys.
  for key, value in single_metrics.items():
    suffixed = key if key in multi_metrics else f"{key}/segmentation"
    np.testing.assert_allclose(multi_metrics[suffixed], value, rtol=1e-5, err_msg=key)


def test_joint_summed_cotangent_equals_the_weighted_sum_of_the_separate_pullbacks():
  """joint pulls back ∂L_e/∂y + Σ λ_k ∂L_k/∂y once: the update of g_e + Σ λ_k g_t,k pulled apart."""
  batch = two_task_batch(3)
  updated = []
  for measure in (False, True):   # one summed pull-back; K + 1 separate pull-backs, joint combiner
    config = two_task_config("joint", task_weight=0.5)
    config.task.classification.weight = 0.4    # λ = (0.5, 0.2)
    config.measure_baseline_cosine = measure
    system, tasks, state, step = setup(config)
    assert tasks.task_weight == {"segmentation": 0.5, "classification": 0.2}
    new_state, metrics = jax.jit(step)(state, batch)
    assert ("cosine/classification" in metrics) == measure
    updated.append(new_state)
  assert_trees_close(updated[0].enhancer_params, updated[1].enhancer_params, rtol=1e-5, atol=1e-6)
  assert_trees_close(updated[0].recognizer_params, updated[1].recognizer_params, rtol=1e-6,
                     atol=1e-7)


def test_shared_forward_pullbacks_are_the_gradients_of_each_task():
  """g_e + Σ λ_k g_t,k from one forward's K + 1 pull-backs = ∇θ (L_enh + Σ λ_k L_k)."""
  batch = two_task_batch(3)
  system, _, state, _ = setup(two_task_config("gradprom"))
  low_quality = system.degrade(jax.random.key(1), jnp.asarray(batch["image"]), jnp.arange(8))
  out = jax.jit(shared_forward_gradients, static_argnums=0)(
      system, state.enhancer_params, state.recognizer_params, low_quality, batch)
  summed = jax.tree.map(lambda e, s, c: e + 0.5 * s + 0.2 * c, out["enhancement_grads"],
                        out["task_grads"]["segmentation"], out["task_grads"]["classification"])

  def weighted_loss(theta):
    enhanced = system.enhance(theta, low_quality, train=True)
    losses = {head.name: head.loss(head.recognize(state.recognizer_params[head.name], enhanced,
                                                  train=True), batch) for head in system.heads}
    return (system.enhancement_loss(enhanced, batch["image"]) + 0.5 * losses["segmentation"]
            + 0.2 * losses["classification"])
  assert_trees_close(summed, jax.jit(jax.grad(weighted_loss))(state.enhancer_params), rtol=1e-4,
                     atol=1e-6)


def test_gradprom_gates_each_task_and_logs_its_statistics():
  config = two_task_config("gradprom")
  config.task.classification.gradprom.threshold = 0.999   # (almost) never open for the diagnosis
  system, tasks, state, step = setup(config)
  assert dict(tasks.task("classification").gate)["threshold"] == 0.999
  step = jax.jit(step)
  for seed in range(3):
    state, metrics = step(state, two_task_batch(seed))
  for key in ("cosine", "gate", "gate_open_rate", "task_loss", "task_grad_norm"):
    for task in ("segmentation", "classification"):
      assert f"{key}/{task}" in metrics, key
      assert np.isfinite(float(metrics[f"{key}/{task}"]))
    assert key not in metrics   # only per-task keys
  assert float(metrics["gate_open_rate/classification"]) == 0.0
  assert -1 <= float(metrics["cosine/segmentation"]) <= 1
  # Both recognisers train, each with its own optimiser state.
  assert set(state.recognizer_params) == set(state.recognizer_opt_state) == {
      "segmentation", "classification"}


def test_multitask_state_checkpoints_and_restores(tmp_path):
  _, _, state, step = setup(two_task_config("gradprom"))
  state, _ = jax.jit(step)(state, two_task_batch(0))
  checkpointer = Checkpointer(tmp_path / "checkpoints", save_interval_steps=1, async_save=False)
  checkpointer.save(1, state, force=True)
  _, _, target, _ = setup(two_task_config("gradprom"))
  restored, restored_step = checkpointer.restore_latest(target)
  checkpointer.close()
  assert restored_step == 1
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  assert_trees_close(restored, state, rtol=0, atol=0)


@pytest.mark.slow   # ~70 s on 2 shared cores: three compiles of the two-task step
def test_two_task_step_on_a_mesh_and_under_pmap_equals_one_device():
  if jax.device_count() < 4:
    pytest.skip("needs 4 devices")
  system, tasks, state, step = setup(two_task_config("gradprom"))
  batches = [two_task_batch(i) for i in range(2)]

  def run(step_fn, place_state, place_batch, read):
    s = place_state(jax.tree.map(jnp.copy, state))   # steps donate their input state
    for batch in batches:
      s, _ = step_fn(s, place_batch(batch))
    return read(s)

  expected = run(jax.jit(step), lambda s: jax.device_put(s, jax.devices()[0]), lambda b: b,
                 lambda s: s)
  phases = phases_from_config(two_task_config("gradprom"))
  for mode in ("mesh", "pmap"):
    parallel = DataParallel(mode)
    compiled = parallel.compile_step(make_train_step(
        system, phases[-1], enhancer_tx=enhancer_tx_from_config(two_task_config(), phases, tasks),
        recognizer_tx=recognizer_tx_from_config(two_task_config(), phases, tasks),
        task_weight=tasks.task_weight, axis_name=parallel.axis_name))
    got = run(compiled, parallel.put_state, parallel.put_batch, parallel.global_state)
    assert_trees_close(got, expected, rtol=1e-5, atol=1e-5, err_msg=mode)


@pytest.mark.parametrize("change, message", [
    (lambda c: setattr(c.task, "recognition", "segmentation,segmentation"), "names a task twice"),
    (lambda c: setattr(c.task.classification, "weight", -1.0),
     "task.classification.weight=-1.0 must be a number >= 0"),
    (lambda c: setattr(c.task.classification.gradprom, "threshold", -0.1),
     "task.classification.gradprom.threshold=-0.1 < 0 with mode 'hard'"),
    (lambda c: setattr(c.task.segmentation.gradprom, "mode", "softer"),
     "task.segmentation.gradprom.mode='softer' is not one of hard, soft"),
    (lambda c: setattr(c.task.classification, "class_weights", "balanced") or setattr(
        c.task.segmentation, "class_weights", "balanced"),
     "task.segmentation.class_weights='balanced' weights image labels"),
    (lambda c: setattr(c.model.recognizers.classification, "name", "unet_segmenter"),
     "task 'classification' needs a model with logits per image (resnet), but "
     "model.recognizers.classification.name='unet_segmenter'"),
    (lambda c: setattr(c.task.classification, "dice_weight", 2.0),   # a segmentation option
     "task.classification.dice_weight is not an option of a classification task"),
])
def test_bad_multitask_configs_are_refused_naming_the_key(change, message):
  config = two_task_config()
  change(config)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validate_config(config)


def test_several_tasks_need_a_multitask_config():
  config = tiny_config()
  config.task.recognition = "segmentation,classification"
  with pytest.raises(ConfigError, match=r"names 2 tasks, but this config has one recogniser "
                                         r"\(model.recognizer\): use a multi-task config"):
    validate_config(config)


def test_per_task_options_fall_back_to_the_shared_keys():
  config = two_task_config()
  config.task_weight, config.task.dice_weight, config.gradprom.mode = 0.3, 2.0, "soft"
  config.task.classification.label_smoothing = 0.1
  config.task.classification.gradprom.mode = "hard"
  tasks = parse_task_config(config)
  segmentation, classification = tasks.task("segmentation"), tasks.task("classification")
  assert (segmentation.task_weight, segmentation.loss_options) == (0.3, (("dice_weight", 2.0),))
  assert segmentation.gate_option("mode") == "soft" and classification.gate_option("mode") == "hard"
  assert classification.loss_options == (("label_smoothing", 0.1),)
  assert classification.model_key == (
      "model.recognizers.classification")
  assert base_config().task.recognition == "segmentation"   # single-task configs are untouched
