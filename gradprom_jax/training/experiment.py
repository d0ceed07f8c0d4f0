"""One training run's config, parsed and validated once: :func:`parse_experiment` returns the
:class:`Experiment` that ``training/main.py`` builds and the loop (``training/train.py``) takes.

It holds the typed pieces the models, tasks, method, phases and optimisers are made from
(:class:`~gradprom_jax.training.training_spec.TrainingSpec`) and the loop's own settings: the
batches, the periodic actions, checkpoints, the other runs it starts from or is judged by, the
parallel and multi-host setup. The loop reads no config key; the config itself travels along only to
be stored as the workdir's ``config.json`` and compared with a stored one.

Lives in ``training`` rather than ``configuration``: the phases' and optimisers' pieces it holds are
the training layer's.
"""
from __future__ import annotations

import copy
import dataclasses
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from gradprom_jax.configuration.config_validation import (check_batch_split, validate_config,
                                                          validate_config_for_dataset)
from gradprom_jax.core.task_config import TaskConfig
from gradprom_jax.training.periodic_actions import Intervals
from gradprom_jax.training.pretrained import INIT_FROM_KEYS, source_path
from gradprom_jax.training.training_spec import TrainingSpec, parse_training_config


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """How the training and evaluation batches are made.

  Attributes:
    batch_size: ``batch_size``, the global batch over every device and host.
    image_size: ``data.image_size`` (None: the dataset's native size).
    patch_size: ``data.patch_size``, random training crops (None: whole images).
    num_workers: ``data.num_workers``, grain's worker processes.
    read_buffer: ``data.read_buffer``, examples each worker reads ahead.
    prefetch: ``data.prefetch``, batches copied to the devices ahead of the step.
  """
  batch_size: int
  image_size: tuple[int, int] | None
  patch_size: tuple[int, int] | None
  num_workers: int
  read_buffer: int
  prefetch: int


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  """What the run keeps of its states (how often: ``Experiment.intervals.checkpoint_every``).

  Attributes:
    keep: ``keep_checkpoints``, the newest kept.
    best_metric: ``checkpoint_best_metric``, the validation metric whose best checkpoint is kept
      too ("-" prefix: lower is better), or None.
    test_on_best: ``test_on_best``: the test set is scored with that best checkpoint.
  """
  keep: int
  best_metric: str | None
  test_on_best: bool


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a training run takes from its config (see the module docstring).

  Attributes:
    config: the config it was parsed from, kept to be stored as ``config.json`` and compared with
      a workdir's stored one (a copy: changing the caller's config changes nothing here).
    spec: the models, tasks, method, phases, optimisers and seed.
    data: ``config.data``, as the dataset modules read it (each owns its keys).
    input: how the batches are made.
    intervals: every how many steps the loop logs, validates, checkpoints and probes the gate.
    checkpoints: what is kept of the states.
    accumulate_steps: ``accumulate_steps``, micro-batches per update.
    max_nonfinite_steps: ``max_nonfinite_steps``, consecutive skipped steps before the run stops.
    preemption_check_every: ``preemption_check_every``.
    num_samples: ``num_samples``, test examples drawn in ``samples.png``.
    init_from: train-state field -> the run its params are warm-started from (``{seed}``
      replaced; ``recognizer.init_from``, ``enhancer.init_from``), only those set.
    judge_workdir: ``judge.workdir`` (``{seed}`` replaced), or None.
    parallel: ``parallel``, "mesh" or "pmap".
    distributed: ``config.distributed``, the multi-host launch settings.
    overwrite: ``overwrite``: resume a workdir that holds another config.
  """
  config: ml_collections.ConfigDict = dataclasses.field(repr=False, compare=False)
  spec: TrainingSpec
  data: ml_collections.ConfigDict = dataclasses.field(repr=False, compare=False)
  input: InputSpec
  intervals: Intervals
  checkpoints: CheckpointSpec
  accumulate_steps: int
  max_nonfinite_steps: int
  preemption_check_every: int
  num_samples: int
  init_from: Mapping[str, str]
  judge_workdir: str | None
  parallel: str
  distributed: Mapping[str, Any]
  overwrite: bool

  @property
  def tasks(self) -> TaskConfig:
    """The degradation, the enhancement loss and the recognition tasks."""
    return self.spec.run.tasks

  @property
  def method(self) -> str:
    """The method's name (``method``)."""
    return self.spec.run.method.name

  @property
  def seed(self) -> int:
    """``seed``."""
    return self.spec.seed

  @property
  def num_train_steps(self) -> int:
    """``num_train_steps``."""
    return self.spec.phases.num_train_steps

  def check_devices(self, num_devices: int) -> None:
    """Raises :class:`~gradprom_jax.configuration.config_validation.ConfigError` if the batch does
    not split over ``num_devices`` devices (and each device's share into the micro-batches)."""
    check_batch_split(self.input.batch_size, self.accumulate_steps, num_devices)

  def check_dataset(self, image_shape: Sequence[int],
                    class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> None:
    """Raises :class:`~gradprom_jax.configuration.config_validation.ConfigError` if the run cannot
    train on the dataset's images of ``image_shape`` and its ``class_names`` (see
    :func:`~gradprom_jax.configuration.config_validation.validate_config_for_dataset`)."""
    validate_config_for_dataset(self.tasks, image_shape, class_names,
                                image_size=self.input.image_size, patch_size=self.input.patch_size)


def _size(value: Any) -> tuple[int, int] | None:
  return None if value is None else tuple(value)


def parse_experiment(config: ml_collections.ConfigDict, *, num_devices: int = 1) -> Experiment:
  """``config`` validated (:func:`~gradprom_jax.configuration.config_validation.validate_config`,
  for ``num_devices`` devices) and parsed, its tasks once, into an :class:`Experiment`.

  Before the device count is known (before JAX starts) parse with the default, then call
  :meth:`Experiment.check_devices`.

  >>> from gradprom_jax.configuration.config import base_config
  >>> experiment = parse_experiment(base_config(), num_devices=4)
  >>> experiment.method, experiment.tasks.names, experiment.seed, experiment.num_train_steps
  ('gradprom', ('segmentation',), 0, 500)
  >>> experiment.intervals
  Intervals(log_every=25, eval_every=250, checkpoint_every=250, gate_probe_every=0)
  >>> experiment.input.batch_size, experiment.input.image_size, experiment.checkpoints.keep
  (8, (192, 256), 3)
  >>> dict(experiment.init_from), experiment.judge_workdir
  ({}, None)
  >>> experiment.check_devices(3)
  Traceback (most recent call last):
  ...
  gradprom_jax.configuration.config_validation.ConfigError: batch_size=8 is not divisible by the number of devices (3).
  """
  tasks = validate_config(config, num_devices=num_devices)
  config = copy.deepcopy(config)
  seed, data = config.seed, config.data
  init_from = {}
  for field, key in INIT_FROM_KEYS.items():   # e.g. "recognizer.init_from"
    group, name = key.split(".")
    path = source_path(config[group][name], seed)
    if path is not None:
      init_from[field] = path
  return Experiment(
      config=config, spec=parse_training_config(config, tasks), data=data,
      input=InputSpec(batch_size=config.batch_size, image_size=_size(data.image_size),
                      patch_size=_size(data.patch_size), num_workers=data.num_workers,
                      read_buffer=data.read_buffer, prefetch=data.prefetch),
      intervals=Intervals(log_every=config.log_every, eval_every=config.eval_every,
                          checkpoint_every=config.checkpoint_every,
                          gate_probe_every=config.gate_reliability_every),
      checkpoints=CheckpointSpec(keep=config.keep_checkpoints,
                                 best_metric=config.checkpoint_best_metric,
                                 test_on_best=bool(config.test_on_best)),
      accumulate_steps=config.accumulate_steps, max_nonfinite_steps=config.max_nonfinite_steps,
      preemption_check_every=config.preemption_check_every, num_samples=config.num_samples,
      init_from=types.MappingProxyType(init_from),
      judge_workdir=source_path(config.judge.workdir, seed), parallel=config.parallel,
      distributed=types.MappingProxyType(config.distributed.to_dict()),
      overwrite=bool(config.overwrite))
