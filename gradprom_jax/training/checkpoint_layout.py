"""Refusing, in one line, a checkpoint written before every per-task value was a dict by task name.

A run of the single-task form used to save its recogniser's params and optimiser state as bare
trees; now they sit under the task's name, as a multi-task run's always did. Such a checkpoint
would not restore (read field by field, a warm start would not match), so each reader refuses it
before reading anything: the resumed run, the warm starts (``*.init_from``), the judge and
``experiments/enhance.py`` (:func:`gradprom_jax.inference.load_trained_system`). The project keeps
no readers for its own earlier runs: such a run is re-run.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gradprom_jax.tasks import TASK_KINDS
from gradprom_jax.training.checkpointing import saved_state_of_run


def has_tasks_by_name(saved_state: Any) -> bool:
  """Whether a saved train state (its tree of metadata) keeps its recognisers by task name; a
  tree without ``recognizer_params`` is not a run's train state and is taken as it is.

  >>> has_tasks_by_name({"recognizer_params": {"segmentation": {"Conv_0": {}}}})
  True
  >>> has_tasks_by_name({"recognizer_params": {"Conv_0": {}, "Dense_0": {}}})
  False
  """
  if not isinstance(saved_state, Mapping) or "recognizer_params" not in saved_state:
    return True
  recognizers = saved_state["recognizer_params"]
  # Task names are task kinds' names, which no recogniser's module is called.
  return (isinstance(recognizers, Mapping) and bool(recognizers)
          and set(recognizers) <= set(TASK_KINDS))


def check_tasks_by_name(run_dir: str | os.PathLike[str], error: type[Exception], what: str = ""
                        ) -> None:
  """Raises ``error`` (its message starting with ``what``) when the newest checkpoint of the run
  in ``run_dir`` was written by an earlier version of the code (:func:`has_tasks_by_name`)."""
  saved = saved_state_of_run(run_dir)
  if saved is not None and not has_tasks_by_name(saved[0]):
    raise error(f"{what + ': ' if what else ''}{os.fspath(run_dir)} was written by an earlier "
                "version of the code (a single task's recogniser not kept under the task's "
                "name): re-run that run, or start a new workdir")
