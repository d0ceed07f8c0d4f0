"""Everything a run carries from step to step, in one pytree that jits, shards and checkpoints."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.system import TaskDrivenSystem
from gradprom_jax.training.params_ema import find_params_ema


class TrainState(flax.struct.PyTreeNode):
  """The state of a run.

  Attributes:
    step: int32 global step (number of train steps taken, skipped non-finite steps included).
    enhancer_params, recognizer_params: the two models' parameters; ``recognizer_params`` is a
      dict by task name, one recogniser each (one entry for a single task).
    enhancer_opt_state, recognizer_opt_state: their optimisers' states (the combiner's counters,
      e.g. GradProm's promoted-update count, live in ``enhancer_opt_state``, one per task;
      ``recognizer_opt_state`` is a dict by task name too).
    rng: uint32 raw key data; each step's randomness is ``fold_in(rng, step)``, so it need not change.
    nonfinite_streak: consecutive skipped (non-finite) steps; training stops past a limit.
    nonfinite_total: all skipped steps of the run.
  """
  step: jax.Array
  enhancer_params: Any
  recognizer_params: Any
  enhancer_opt_state: Any
  recognizer_opt_state: Any
  rng: jax.Array
  nonfinite_streak: jax.Array
  nonfinite_total: jax.Array

  @property
  def key(self) -> jax.Array:
    return jax.random.wrap_key_data(self.rng)

  def for_evaluation(self) -> TrainState:
    """The state that evaluation scores: with a moving average of the enhancer's parameters in its
    optimiser state (``optim.ema_decay``), that average in place of the enhancer's parameters."""
    ema = find_params_ema(self.enhancer_opt_state)
    return self if ema is None else self.replace(enhancer_params=ema)


def create_train_state(*, seed: int, enhancer_params: Any, recognizer_params: Any,
                       enhancer_tx: optax.GradientTransformation,
                       recognizer_tx: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0."""
  return TrainState(
      step=jnp.zeros([], jnp.int32),
      enhancer_params=enhancer_params, recognizer_params=recognizer_params,
      enhancer_opt_state=enhancer_tx.init(enhancer_params),
      recognizer_opt_state=recognizer_tx.init(recognizer_params),
      rng=jax.random.key_data(jax.random.key(seed)),
      nonfinite_streak=jnp.zeros([], jnp.int32), nonfinite_total=jnp.zeros([], jnp.int32))


def initial_state(seed: int, system: TaskDrivenSystem, image_shape,
                  enhancer_tx, recognizer_tx, *, sharding: jax.sharding.Sharding | None = None
                  ) -> TrainState:
  """The state at step 0 of a run: both models initialised from ``seed`` (``config.seed``).

  Also the restore target of a run's checkpoints (the trained system and the warm starts rebuild
  it from the run's config and ``model_info.json``). With ``sharding``, the state is computed by
  one compiled program straight into that sharding, with the same values: no array is made on
  one device first and then moved.
  """
  def init() -> TrainState:
    enhancer_params, recognizer_params = system.init_params(
        jax.random.key(seed), tuple(image_shape))
    return create_train_state(seed=seed, enhancer_params=enhancer_params,
                              recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                              recognizer_tx=recognizer_tx)
  return init() if sharding is None else jax.jit(init, out_shardings=sharding)()
