"""Is GradProm's gate deciding on signal or on noise? The cosine of two halves of one batch.

GradProm opens its gate on the sign of cos(g_e, g_t) measured on one batch. If that sign is mostly
sampling noise, two disjoint halves of the same batch disagree about it about as often as a coin
would. :func:`make_gate_probe` measures cos(g_e, g_t) on the first half of a global batch, on the
second half and on the whole batch, with the train step's own maths
(:func:`~gradprom_jax.training.train_step.shared_forward_gradients`, the same degradation and the same
per-example noise), and reports whether the halves agree in sign. Logged every
``gate_reliability_every`` steps as ``gate_probe/*`` beside the train record; the fraction of steps
with ``halves_agree = 1`` tells how reproducible the gate's decisions are at this batch size (a
case for ``gradprom.cosine_ema`` or ``gradprom.gradient_ema`` when it is near 0.5).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from gradprom_jax.core.combiners import cosine_similarity
from gradprom_jax.core.image_dtype import with_float_images
from gradprom_jax.core.system import TaskDrivenSystem
from gradprom_jax.training.example_ids import example_ids as batch_example_ids
from gradprom_jax.training.train_state import TrainState
from gradprom_jax.training.train_step import Batch, shared_forward_gradients

PROBE_PREFIX = "gate_probe/"


def halves_cosines(system: TaskDrivenSystem, state: TrainState, batch: Batch,
                   step: jax.Array) -> dict[str, jax.Array]:
  """cos(g_e, g_t) on each half of ``batch`` and on all of it, degraded as train step ``step`` did.

  Args:
    system: the models, degradation and losses.
    state: a (global, unreplicated) train state; its parameters are the ones differentiated.
    batch: a global batch of at least 2 examples (with an odd size the last example is left out of
      both halves, never out of the whole).
    step: the global step whose degradation noise to reproduce (the step that used ``batch``).

  Returns:
    float32 scalars ``cosine_half_a``, ``cosine_half_b``, ``cosine_full`` (each in [-1, 1], 0 where
    undefined) and ``halves_agree``: 1.0 when the halves' cosines have the same sign, else 0.0;
    in the multi-task form, each task's, suffixed ``/<task>``.
  """
  size = batch["image"].shape[0]
  if size < 2:
    raise ValueError(f"the gate probe needs a batch of at least 2 examples, got {size}.")
  half = size // 2
  # The train step keys each example's noise by (fold_in(key, step), the id the loader gave it).
  low_quality = system.degrade(jax.random.fold_in(state.key, step), batch["image"],
                               batch_example_ids(batch))

  def cosines(examples: slice) -> tuple[jax.Array, ...]:
    """cos(g_e, g_t,k) of every task k on ``examples``, in ``system.heads`` order."""
    part = {name: value[examples] for name, value in batch.items()}
    out = shared_forward_gradients(system, state.enhancer_params, state.recognizer_params,
                                   low_quality[examples], part)
    return tuple(cosine_similarity(out["enhancement_grads"], out["task_grads"][head.name])
                 for head in system.heads)

  values = {}
  for head, half_a, half_b, full in zip(system.heads, cosines(slice(0, half)),
                                        cosines(slice(half, 2 * half)), cosines(slice(None))):
    values.update({
        system.metric_key("cosine_half_a", head): half_a,
        system.metric_key("cosine_half_b", head): half_b,
        system.metric_key("cosine_full", head): full,
        system.metric_key("halves_agree", head): (jnp.sign(half_a) == jnp.sign(half_b)
                                                  ).astype(jnp.float32)})
  return values


def make_gate_probe(system: TaskDrivenSystem
                    ) -> Callable[[TrainState, Batch, int], dict[str, float]]:
  """``probe(state, batch, step) -> {"gate_probe/<name>": float}``, compiled once.

  ``state`` must be global (under pmap: ``parallel.global_state(...)``) and ``batch`` global arrays
  (``parallel.put_global_batch``), so one plain ``jax.jit`` program serves every parallel mode.

  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from gradprom_jax.configuration.config import base_config, shrink_for_smoke_test
  >>> from gradprom_jax.configuration.run_spec import system_from_config
  >>> from gradprom_jax.training.train_state import create_train_state
  >>> import optax
  >>> config = shrink_for_smoke_test(base_config())
  >>> system = system_from_config(config, channels=1, num_classes=2)
  >>> enhancer, recognizer = system.init_params(jax.random.key(0), (32, 32, 1))
  >>> state = create_train_state(seed=0, enhancer_params=enhancer, recognizer_params=recognizer,
  ...                            enhancer_tx=optax.sgd(0.1), recognizer_tx=optax.sgd(0.1))
  >>> rng = np.random.default_rng(0)
  >>> batch = {"image": jnp.asarray(rng.uniform(size=(4, 32, 32, 1)), jnp.float32),
  ...          "mask": jnp.asarray(rng.integers(0, 2, size=(4, 32, 32)), jnp.int32)}
  >>> values = make_gate_probe(system)(state, batch, 0)
  >>> sorted(name.removeprefix("gate_probe/") for name in values)
  ['cosine_full', 'cosine_half_a', 'cosine_half_b', 'halves_agree']
  >>> all(-1 <= v <= 1 for v in values.values())
  True
  """
  compiled = jax.jit(lambda state, batch, step: halves_cosines(system, state,
                                                              with_float_images(batch), step))

  def probe(state: TrainState, batch: Batch, step: int) -> dict[str, float]:
    values = jax.device_get(compiled(state, batch, jnp.asarray(step, jnp.int32)))
    return {PROBE_PREFIX + name: float(value) for name, value in values.items()}

  return probe

