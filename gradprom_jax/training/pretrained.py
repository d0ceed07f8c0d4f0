"""Models trained by other runs: warm starts (``*.init_from``) and the judge (``judge.workdir``).

A fair comparison trains one recogniser once, on high-quality images (``method=recognizer_only``),
and reuses it: as every method's starting recogniser (``recognizer.init_from``, optionally with
``recognizer.frozen=True``), and as one fixed yardstick that scores every run's enhanced images
(``judge.workdir``). Paths may hold ``{seed}``, replaced by the run's seed, so one sweep command
points each seed at its own pre-trained recogniser.

Both are read before the workdir is touched, so a missing or mismatched source fails with nothing
written (`SourceRunError`, exit status 1). Warm starts apply at a fresh start only: a resumed run
restores its own checkpoint.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections

from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.configuration.task_parsing import is_multitask
from gradprom_jax.core.system import TaskDrivenSystem
from gradprom_jax.core.task_config import parse_recognition
from gradprom_jax.training.checkpoint_layout import check_tasks_by_name
from gradprom_jax.training.checkpointing import SourceRunError, restore_field_from_run
from gradprom_jax.training.run_config import ConfigMismatchError, read_stored_config

# Train-state field -> the config key naming the run it is restored from.
INIT_FROM_KEYS = {"recognizer_params": "recognizer.init_from",
                  "enhancer_params": "enhancer.init_from"}
MODEL_INFO_FILENAME = "model_info.json"   # what rebuilds a run's models; written by the train loop


def model_info_form(system: TaskDrivenSystem, by_task: Mapping[str, Any]) -> Any:
  """Per-task values as ``model_info.json`` stores them: by task name in the multi-task form, the
  one task's value itself for a run of the single-task form (the file's public form).

  >>> from gradprom_jax.configuration.config import base_config
  >>> from gradprom_jax.configuration.run_spec import system_from_config
  >>> system = system_from_config(base_config(), channels=3, num_classes=2)
  >>> model_info_form(system, system.num_classes)
  2
  """
  return dict(by_task) if system.multi_task else by_task[system.heads[0].name]


def from_model_info_form(system: TaskDrivenSystem, stored: Any) -> dict[str, Any]:
  """The inverse of :func:`model_info_form`: a ``model_info.json`` value by task name.

  >>> from gradprom_jax.configuration.config import base_config
  >>> from gradprom_jax.configuration.run_spec import system_from_config
  >>> system = system_from_config(base_config(), channels=3, num_classes=2)
  >>> from_model_info_form(system, model_info_form(system, system.num_classes)) == system.num_classes
  True
  """
  return dict(stored) if system.multi_task else {system.heads[0].name: stored}


def source_path(template: str | None, seed: int) -> str | None:
  """``template`` with ``{seed}`` replaced by ``seed`` (other braces are kept as they are).

  >>> source_path("runs/recognizer/seed_{seed}", 3)
  'runs/recognizer/seed_3'
  >>> source_path(None, 3) is None
  True
  """
  return None if template is None else str(template).replace("{seed}", str(seed))


def load_init_params(init_from: Mapping[str, str], system: TaskDrivenSystem,
                     image_shape: tuple[int, ...], *, sharding: Any = None) -> dict[str, Any]:
  """Train-state field -> params restored from the run ``init_from`` names for it (a field of
  `INIT_FROM_KEYS` -> a workdir, ``{seed}`` already replaced).

  The params get this run's model shapes (a mismatch names both shapes and the source) and
  ``sharding``.
  """
  restored = {}
  for field, path in init_from.items():
    key = INIT_FROM_KEYS[field]
    check_tasks_by_name(path, SourceRunError, key)
    targets = dict(zip(("enhancer_params", "recognizer_params"),
                       _abstract_params(system, image_shape)))
    params, step = restore_field_from_run(path, field, _placed(targets[field], sharding), what=key)
    logging.info("%s: %s restored from %s (step %d).", key, field, path, step)
    restored[field] = params
  return restored


def _abstract_params(system: TaskDrivenSystem, image_shape: tuple[int, ...]) -> tuple[Any, Any]:
  """Shape-dtype structs of (enhancer, recogniser) params, computing nothing."""
  return jax.eval_shape(functools.partial(system.init_params, image_shape=tuple(image_shape)),
                        jax.random.key(0))


def _placed(abstract: Any, sharding: Any) -> Any:
  """Shape-dtype structs with ``sharding`` (None: restored as host numpy arrays)."""
  if sharding is None:
    return abstract
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


@dataclasses.dataclass(frozen=True)
class Judge:
  """A fixed recogniser from another run, with the system that applies it (only its recogniser is
  used).

  Attributes:
    system: the judge run's system (its own recogniser architecture).
    params: its recogniser's parameters.
    workdir: the judge run's workdir.
    step: the step its checkpoint was saved at.
  """
  system: TaskDrivenSystem
  params: Any
  workdir: Path
  step: int


def load_judge(path: str | None, system: TaskDrivenSystem, image_shape: tuple[int, ...], *,
               data_name: str, sharding: Any = None) -> Judge | None:
  """The judge in workdir ``path`` (``judge.workdir``, ``{seed}`` already replaced; None: no
  judge), checked against this run's task and its dataset ``data_name``.

  Raises:
    SourceRunError: the workdir is not a finished run, or it recognises another task, dataset,
      number of classes or channel count.
  """
  if path is None:
    return None
  workdir = Path(path)
  try:
    judge_config = ml_collections.ConfigDict(read_stored_config(workdir))
    info = json.loads((workdir / MODEL_INFO_FILENAME).read_text())
  except ConfigMismatchError as e:
    raise SourceRunError(f"judge.workdir: {e}") from e
  except (OSError, ValueError) as e:
    raise SourceRunError(f"judge.workdir: {path!r} is not a run's workdir (no readable "
                         f"config.json and {MODEL_INFO_FILENAME}: {e})") from e
  # A multi-task run is judged by a run of the same tasks: one judge recogniser per task.
  theirs = {"task.recognition": ",".join(parse_recognition(judge_config.task.recognition)),
            "multi-task form": is_multitask(judge_config), "data.name": judge_config.data.name,
            "classes": info["num_classes"], "image channels": info["image_shape"][-1]}
  ours = {"task.recognition": system.recognition, "multi-task form": system.multi_task,
          "data.name": data_name, "classes": model_info_form(system, system.num_classes),
          "image channels": image_shape[-1]}
  differing = [f"{k} {theirs[k]!r} there, {ours[k]!r} here" for k in ours if theirs[k] != ours[k]]
  if differing:
    raise SourceRunError(f"judge.workdir: {path!r} cannot judge this run: "
                         + "; ".join(differing))
  if judge_config.method != "recognizer_only":
    logging.warning("judge.workdir: %s is a %s run, not recognizer_only: its recogniser was not "
                    "trained on high-quality images alone.", path, judge_config.method)
  judge_system = system_from_config(judge_config, channels=info["image_shape"][-1],
                                    num_classes=info["num_classes"])
  check_tasks_by_name(workdir, SourceRunError, "judge.workdir")
  _, target = _abstract_params(judge_system, info["image_shape"])
  params, step = restore_field_from_run(workdir, "recognizer_params", _placed(target, sharding),
                                        what="judge.workdir")
  logging.info("judge.workdir: the recogniser(s) of %s (step %d) scores every evaluation.", path, step)
  return Judge(system=judge_system, params=params, workdir=workdir, step=step)
