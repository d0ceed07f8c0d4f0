"""Applying a trained run to new images: load a workdir's newest checkpoint, enhance, recognise."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gradprom_jax.core.system import TaskDrivenSystem, create_system
from gradprom_jax.training import evaluation
from gradprom_jax.training.checkpoint_layout import check_tasks_by_name
from gradprom_jax.training.checkpointing import Checkpointer, CheckpointRestoreError
from gradprom_jax.training.optimizers import make_enhancer_tx, make_recognizer_tx
from gradprom_jax.training.phases import make_phases
from gradprom_jax.training.pretrained import MODEL_INFO_FILENAME, from_model_info_form
from gradprom_jax.training.run_config import read_stored_config
from gradprom_jax.training.train_state import initial_state
from gradprom_jax.training.training_spec import parse_training_config


@dataclasses.dataclass
class TrainedSystem:
  """A run's system and its trained parameters."""
  config: ml_collections.ConfigDict
  system: TaskDrivenSystem
  enhancer_params: Any
  recognizer_params: Any
  class_names: dict[str, tuple[str, ...]]   # by task name
  step: int

  def enhance(self, images: np.ndarray, *, degrade: bool = False, first_id: int = 0) -> dict:
    """Enhances a batch of images (N, h, w, C) in [0, 1] and recognises the result.

    With ``degrade=True`` the images are taken as high quality and degraded first, with the same
    seeded degradation the evaluation uses (to see what the system does on simulated inputs).

    Returns:
      ``{"input", "enhanced", "probabilities"}`` as numpy arrays; probabilities are per pixel
      (N, H, W, K) for segmentation, per image (N, K) for classification, in a dict by task name.
    """
    return jax.device_get(_enhance(self.system, self.enhancer_params, self.recognizer_params,
                                   jnp.asarray(images, jnp.float32), degrade, first_id))


@jax.jit(static_argnums=(0, 4))
def _enhance(system, enhancer_params, recognizer_params, images, degrade, first_id):
  if degrade:
    ids = first_id + jnp.arange(images.shape[0])
    images = system.degrade(jax.random.key(evaluation.EVAL_SEED), images, ids)
  enhanced = system.enhance(enhancer_params, images, train=False)
  probabilities = {head.name: head.probabilities(head.recognize(recognizer_params[head.name],
                                                               enhanced, train=False))
                   for head in system.heads}
  return {"input": images, "enhanced": enhanced, "probabilities": probabilities}


def load_trained_system(workdir: str | Path) -> TrainedSystem:
  """The system trained in ``workdir`` (its config.json, model_info.json and newest checkpoint)."""
  workdir = Path(workdir)
  for name in ("config.json", MODEL_INFO_FILENAME):
    if not (workdir / name).exists():
      raise FileNotFoundError(f"{workdir / name} not found: is {workdir} the workdir of a run?")
  config = ml_collections.ConfigDict(read_stored_config(workdir))
  info = json.loads((workdir / MODEL_INFO_FILENAME).read_text())
  image_shape = tuple(info["image_shape"])
  # The stored config, read once into its typed pieces.
  spec = parse_training_config(config)
  system = create_system(spec.run.model, spec.run.tasks, channels=image_shape[-1],
                         num_classes=info["num_classes"])
  check_tasks_by_name(workdir, CheckpointRestoreError)
  phases = make_phases(spec.phases)
  target = initial_state(spec.seed, system, image_shape,
                         make_enhancer_tx(spec.optimizer, phases, spec.run.method, spec.run.tasks),
                         make_recognizer_tx(spec.optimizer, phases, spec.run.tasks))
  checkpointer = Checkpointer(workdir / "checkpoints", save_interval_steps=1, async_save=False)
  restored = checkpointer.restore_latest(target)
  checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint in {workdir / 'checkpoints'}: train the run first.")
  state, step = restored
  state = state.for_evaluation()   # the enhancer's parameter average, when the run kept one
  return TrainedSystem(config=config, system=system, enhancer_params=state.enhancer_params,
                       recognizer_params=state.recognizer_params,
                       class_names={name: tuple(names) for name, names in
                                    from_model_info_form(system, info["class_names"]).items()},
                       step=step)
