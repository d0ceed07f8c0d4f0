"""The two optimisers of a run: the enhancer's (combiner → clipping → AdamW) and the recogniser's."""
from __future__ import annotations

import ml_collections
import optax

from gradprom_jax.methods import build_combiner
from gradprom_jax.phases import Phase


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up to ``peak``, then cosine decay to 0 over the model's own update count."""
  total_steps = max(total_steps, 1)
  warmup_steps = min(warmup_steps, total_steps - 1) if total_steps > 1 else 0
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps)


def _adamw(config: ml_collections.ConfigDict, peak_lr: float, total_steps: int):
  # inject_hyperparams exposes the current learning rate in the state, so the loop can log it.
  return optax.inject_hyperparams(optax.adamw)(
      learning_rate=learning_rate_schedule(peak_lr, config.optim.warmup_steps, total_steps),
      weight_decay=config.optim.weight_decay)


def _clipping(config: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
  return [] if config.optim.clip_norm is None else [optax.clip_by_global_norm(config.optim.clip_norm)]


def make_enhancer_tx(config: ml_collections.ConfigDict,
                     phases: tuple[Phase, ...]) -> optax.GradientTransformationExtraArgs:
  """The enhancer's optimiser: the method's combiner (when a phase combines g_e and g_t), clipping,
  AdamW with a warm-up cosine schedule over the steps that update the enhancer."""
  updates = sum(p.end - p.start for p in phases if p.enhancer_gradient != "none")
  members = []
  if any(p.enhancer_gradient == "separate" for p in phases):
    members.append(build_combiner(config))
  members += _clipping(config)
  members.append(_adamw(config, config.optim.enhancer_lr, updates))
  return optax.chain(*members)


def make_recognizer_tx(config: ml_collections.ConfigDict,
                       phases: tuple[Phase, ...]) -> optax.GradientTransformation:
  """The recogniser's optimiser: clipping and AdamW over the steps that update the recogniser."""
  updates = sum(p.end - p.start for p in phases if p.update_recognizer)
  return optax.chain(*_clipping(config), _adamw(config, config.optim.recognizer_lr, updates))
