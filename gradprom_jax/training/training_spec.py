"""A training run's config, read once: :func:`parse_training_config` adds the training layer's typed
pieces (:class:`~gradprom_jax.training.phases.PhaseSpec`,
:class:`~gradprom_jax.training.optimizers.OptimizerSpec`) to the configuration layer's
:class:`~gradprom_jax.configuration.run_spec.RunSpec`, so that the phases, the optimisers and the
state take typed pieces, not the config.

The ``*_from_config`` functions are thin config-taking forms of :func:`make_phases`,
:func:`make_enhancer_tx` and :func:`make_recognizer_tx`, for tests and tools that hold a config.
"""
from __future__ import annotations

import dataclasses

import ml_collections
import optax

from gradprom_jax.configuration.run_spec import RunSpec, parse_method, parse_run_config
from gradprom_jax.configuration.task_parsing import parse_task_config
from gradprom_jax.core.task_config import TaskConfig
from gradprom_jax.methods import lookup
from gradprom_jax.training.optimizers import OptimizerSpec, make_enhancer_tx, make_recognizer_tx
from gradprom_jax.training.phases import Phase, PhaseSpec, make_phases


@dataclasses.dataclass(frozen=True)
class TrainingSpec:
  """Every typed piece of a training run's config.

  Attributes:
    run: the models, tasks and method
      (:func:`~gradprom_jax.configuration.run_spec.parse_run_config`).
    phases: what the phases are made from.
    optimizer: the optimisers' settings.
    seed: ``config.seed``: the models' initialisation and the step's randomness.
  """
  run: RunSpec
  phases: PhaseSpec
  optimizer: OptimizerSpec
  seed: int


def parse_phase_spec(config: ml_collections.ConfigDict) -> PhaseSpec:
  """The config keys the phases are made from.

  >>> from gradprom_jax.configuration.config import base_config
  >>> config = base_config()
  >>> spec = parse_phase_spec(config)
  >>> spec.method.name, spec.num_train_steps == config.num_train_steps
  ('gradprom', True)
  """
  return PhaseSpec(
      method=lookup(config.method), num_train_steps=config.num_train_steps,
      recognizer_frozen=bool(config.recognizer.frozen),
      recognizer_train_on=config.recognizer.train_on,
      measure_baseline_cosine=bool(config.measure_baseline_cosine))


def parse_optimizer_spec(config: ml_collections.ConfigDict) -> OptimizerSpec:
  """``config.optim``.

  >>> from gradprom_jax.configuration.config import base_config
  >>> parse_optimizer_spec(base_config()).clip_norm
  1.0
  """
  optim = config.optim
  return OptimizerSpec(
      enhancer_lr=optim.enhancer_lr, recognizer_lr=optim.recognizer_lr,
      warmup_steps=optim.warmup_steps, weight_decay=optim.weight_decay,
      weight_decay_mask=optim.weight_decay_mask, clip_norm=optim.clip_norm,
      ema_decay=optim.ema_decay)


def parse_training_config(config: ml_collections.ConfigDict,
                          tasks: TaskConfig | None = None) -> TrainingSpec:
  """Every typed piece of ``config``; ``tasks`` when already parsed (by ``validate_config``), else
  parsed here.

  >>> from gradprom_jax.configuration.config import base_config
  >>> spec = parse_training_config(base_config())
  >>> spec.run.method.name, spec.phases.num_train_steps == base_config().num_train_steps, spec.seed
  ('gradprom', True, 0)
  """
  return TrainingSpec(run=parse_run_config(config, tasks), phases=parse_phase_spec(config),
                      optimizer=parse_optimizer_spec(config), seed=config.seed)


def phases_from_config(config: ml_collections.ConfigDict) -> tuple[Phase, ...]:
  """:func:`~gradprom_jax.training.phases.make_phases` of ``config``."""
  return make_phases(parse_phase_spec(config))


def enhancer_tx_from_config(config: ml_collections.ConfigDict, phases: tuple[Phase, ...],
                            tasks: TaskConfig | None = None
                            ) -> optax.GradientTransformationExtraArgs:
  """:func:`~gradprom_jax.training.optimizers.make_enhancer_tx` of ``config`` (its parsed
  ``tasks``, parsed here when not given)."""
  return make_enhancer_tx(parse_optimizer_spec(config), phases, parse_method(config),
                          parse_task_config(config) if tasks is None else tasks)


def recognizer_tx_from_config(config: ml_collections.ConfigDict, phases: tuple[Phase, ...],
                              tasks: TaskConfig | None = None) -> optax.GradientTransformation:
  """:func:`~gradprom_jax.training.optimizers.make_recognizer_tx` of ``config`` (its parsed
  ``tasks``, parsed here when not given)."""
  return make_recognizer_tx(parse_optimizer_spec(config), phases,
                            parse_task_config(config) if tasks is None else tasks)
