"""The task kinds by name (gradprom_jax.tasks.registry), and what makes a kind one module plus one
registry line: a toy kind defined here, once registered, is parsed from ``task.recognition``, trains
through the system's loss and the train step, is scored by the evaluation and drawn on the sample
grid, while no generic module knows its name."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import PIL.Image
import pytest

from gradprom_jax.configuration.config import (base_config, classification_recognizer,
                                               multitask_config, task_options)
from gradprom_jax.configuration.config_help import key_comments
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.configuration.task_parsing import parse_task_config
from gradprom_jax.core.task_config import TaskConfigError, parse_recognition
from gradprom_jax.tasks import TASK_KINDS, LossOption, TaskKind, task_kind
from gradprom_jax.tasks.padding import valid_rows
from gradprom_jax.training import evaluation
from gradprom_jax.training.train_step import make_train_step
from gradprom_jax.training.visualization import DrawnTask, save_sample_grid

from test_train_step import make_batch, setup, tiny_config  # noqa: E402


def test_the_registered_kinds_are_found_by_name():
  assert tuple(TASK_KINDS) == ("segmentation", "classification")
  assert {name: kind.target_key for name, kind in TASK_KINDS.items()} == {
      "segmentation": "mask", "classification": "label"}
  with pytest.raises(KeyError, match="unknown task kind 'presence'; valid: segmentation, "
                                     "classification"):
    task_kind("presence")


@dataclasses.dataclass
class HitRate:
  hits: int = 0
  count: int = 0

  def compute(self):
    return {"presence_accuracy": self.hits / self.count}


class Presence(TaskKind):
  """Whether an image's label is above 0, from the recogniser's first two logits."""
  name = "presence"
  target_key = "label"
  targets_description = "class labels"
  loss_options = (LossOption("presence_margin", 0.0,
                             "Presence loss: a margin added to the absent class's logit."),)

  def loss(self, logits, targets, *, class_weights=None, normalizer=None, presence_margin=0.0):
    present = (targets > 0).astype(jnp.float32)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(
        logits[:, 1] - logits[:, 0] - presence_margin, present))

  def eval_outputs(self, probabilities, targets):
    return {"hit": (probabilities.argmax(-1) > 0) == (targets > 0)}

  def new_metrics(self, num_classes):
    return HitRate()

  def update_metrics(self, metrics, outputs, valid):
    keep = valid_rows(valid, len(outputs["hit"]))
    metrics.hits += int(np.sum(outputs["hit"][keep]))
    metrics.count += int(keep.sum())

  def class_names(self, dataset):
    return ("absent", "present")

  def draw(self, axes, prediction, target, class_names):
    axes[1].set_title(f"present: {bool(prediction > 0)}", fontsize=7)


@pytest.fixture
def presence(monkeypatch):
  """The toy kind's registry line."""
  monkeypatch.setitem(TASK_KINDS, Presence.name, Presence())
  return TASK_KINDS[Presence.name]


def test_an_unregistered_kind_is_refused_by_name():
  with pytest.raises(TaskConfigError, match="'presence' is not one of segmentation, classification"):
    parse_recognition("presence")


def test_a_registered_toy_kind_trains_is_scored_and_drawn(presence, tmp_path):
  assert parse_recognition("segmentation,presence") == ("segmentation", "presence")
  config = tiny_config("gradprom", recognition="classification")
  config.task.recognition = "presence"
  system, phases, enhancer_tx, recognizer_tx, state = setup(config, num_classes=3)
  assert system.heads[0].kind is presence
  assert system.heads[0].loss_options == (("presence_margin", 0.0),)
  batch = make_batch(0, recognition="classification")
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)
  np.testing.assert_array_equal(system.heads[0].loss(logits, batch),
                                presence.loss(logits, jnp.asarray(batch["label"])))

  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
  state, metrics = step(state, batch)
  state, metrics = step(state, make_batch(1, recognition="classification"))
  assert int(state.step) == 2 and np.isfinite(float(metrics["task_loss"]))

  eval_step = jax.jit(evaluation.make_eval_step(system))
  accumulator = evaluation.PipelineMetrics(system.heads)
  eval_batch = dict(make_batch(2, recognition="classification"), valid=np.arange(8) < 6)
  outputs = jax.device_get(eval_step(state.enhancer_params, state.recognizer_params,
                                     eval_batch, 0))
  accumulator.update(outputs, eval_batch["valid"])
  results = accumulator.compute()
  assert {"presence_accuracy", "no_enhancement_presence_accuracy",
          "hq_input_presence_accuracy", "psnr"} <= set(results)
  assert 0 <= results["presence_accuracy"] <= 1

  images = make_batch(3, batch_size=2, recognition="classification")["image"]
  path = tmp_path / "samples.png"
  save_sample_grid(path, degraded=images, enhanced=images, high_quality=images, panel_pixels=40,
                 tasks=[DrawnTask(presence, np.array([0, 2]), np.array([0, 1]))])
  assert PIL.Image.open(path).size == (120, 2 * (40 + 14))


def test_a_registered_toy_kind_brings_its_config_keys_help_checks_and_outputs(presence):
  config = base_config()
  assert config.task.presence_margin == 0.0   # the kind's loss option, shared by the tasks
  comments = key_comments()
  assert comments["task.presence_margin"] == (
      "Presence loss: a margin added to the absent class's logit.")
  assert comments["task.<task>.presence_margin"] == (
      "Presence loss: a margin added to the absent class's logit. None: task.presence_margin.")
  assert "presence_margin" in task_options("presence") and task_options(
      "presence").presence_margin is None   # None: the shared key's

  config.task.recognition, config.task.presence_margin = "presence", 0.5
  config.model.recognizer = classification_recognizer()   # logits per image, as the kind scores
  validate_config(config)
  assert parse_task_config(config).tasks[0].loss_options == (("presence_margin", 0.5),)
  config.model.recognizer = base_config().model.recognizer
  with pytest.raises(ConfigError, match="task.recognition='presence' needs a model with logits "
                                        r"per image \(resnet\), but model.recognizer.name="
                                        "'unet_segmenter' gives logits per pixel"):
    validate_config(config)

  config = multitask_config(base_config(), {"segmentation": base_config().model.recognizer,
                                            "presence": classification_recognizer()})
  config.task.presence.presence_margin = 0.25
  validate_config(config)
  tasks = parse_task_config(config)
  assert tasks.task("presence").loss_options == (("presence_margin", 0.25),)
  assert tasks.task("segmentation").loss_options == (("dice_weight", 1.0),)
  config.task.presence.dice_weight = 1.0
  with pytest.raises(TaskConfigError, match="task.presence.dice_weight is not an option of a "
                                            "presence task"):
    parse_task_config(config)

  # What enhance.py writes of its predictions: the default columns, no picture.
  assert presence.prediction_columns(np.array([0.25, 0.75]), ("absent", "present")) == {
      "predicted": "present", "p_absent": "0.250000", "p_present": "0.750000"}
  assert presence.prediction_image(np.array([0.25, 0.75])) is None
