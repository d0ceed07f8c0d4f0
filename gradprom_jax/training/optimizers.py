"""The optimisers of a run: the enhancer's (combiner → clipping → AdamW → optional parameter
average) and the recogniser's (clipping → AdamW; with several tasks, one such per recogniser)."""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from gradprom_jax.configuration.run_spec import parse_method
from gradprom_jax.core.methods import build_combiner
from gradprom_jax.core.task_config import TaskConfig, parse_task_config
from gradprom_jax.training.params_ema import params_ema
from gradprom_jax.training.phases import Phase


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up to ``peak``, then cosine decay to 0 over the model's own update count."""
  total_steps = max(total_steps, 1)
  warmup_steps = min(warmup_steps, total_steps - 1) if total_steps > 1 else 0
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, total_steps)


def kernels_only(params: Any) -> Any:
  """True for the conv and dense kernels (leaves named ``kernel`` with ndim >= 2), False for biases
  and norm scales: weight decay pulls a GroupNorm scale or a bias towards 0, not towards simplicity.

  >>> import jax.numpy as jnp
  >>> kernels_only({"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
  ...               "norm": {"scale": jnp.ones(4)}})
  {'conv': {'bias': False, 'kernel': True}, 'norm': {'scale': False}}
  """
  def is_kernel(path, leaf):
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    return name == "kernel" and leaf.ndim >= 2
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def _adamw(config: ml_collections.ConfigDict, peak_lr: float, total_steps: int):
  # inject_hyperparams exposes the current learning rate in the state, so the loop can log it; the
  # mask is a function of the params, not a schedule, hence static. Configs saved before the key
  # existed decayed every parameter.
  masked = config.optim.get("weight_decay_mask", "all") == "kernels"
  mask = {"mask": kernels_only} if masked else {}
  return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=learning_rate_schedule(peak_lr, config.optim.warmup_steps, total_steps),
      weight_decay=config.optim.weight_decay, **mask)


def _clipping(config: ml_collections.ConfigDict) -> list[optax.GradientTransformation]:
  return [] if config.optim.clip_norm is None else [optax.clip_by_global_norm(config.optim.clip_norm)]


def make_enhancer_tx(config: ml_collections.ConfigDict, phases: tuple[Phase, ...],
                     tasks: TaskConfig | None = None) -> optax.GradientTransformationExtraArgs:
  """The enhancer's optimiser: the method's combiner (when a phase combines g_e and g_t; built for
  ``tasks``, the config's parsed tasks, parsed here when not given), clipping, AdamW with a warm-up
  cosine schedule over the steps that update the enhancer, and with ``optim.ema_decay`` a moving
  average of the parameters (evaluation uses it)."""
  updates = sum(p.end - p.start for p in phases if p.enhancer_gradient != "none")
  members = []
  if any(p.enhancer_gradient == "separate" for p in phases):
    members.append(build_combiner(parse_method(config),
                                  parse_task_config(config) if tasks is None else tasks))
  members += _clipping(config)
  members.append(_adamw(config, config.optim.enhancer_lr, updates))
  if config.optim.get("ema_decay"):   # None or 0: off (configs saved before the key: off)
    members.append(params_ema(config.optim.ema_decay))
  return optax.chain(*members)


def make_recognizer_tx(config: ml_collections.ConfigDict, phases: tuple[Phase, ...],
                       tasks: TaskConfig | None = None) -> optax.GradientTransformation:
  """The recogniser's optimiser: clipping and AdamW over the steps that update the recogniser.

  In the multi-task form (``tasks``, parsed from ``config`` when not given) each recogniser has its
  own (clipped by its own gradient's norm): see :func:`per_task_optimizer`.
  """
  updates = sum(p.end - p.start for p in phases if p.update_recognizer)
  tasks = parse_task_config(config) if tasks is None else tasks
  def one():
    return optax.chain(*_clipping(config), _adamw(config, config.optim.recognizer_lr, updates))
  return per_task_optimizer({name: one() for name in tasks.names}) if tasks.multi_task else one()


def per_task_optimizer(optimizers: dict[str, optax.GradientTransformation]
                       ) -> optax.GradientTransformation:
  """One optimiser per task over params that are a dict by task name; the state is a dict too.

  Each task's optimiser sees only its own recogniser's gradients (its clipping norm, its Adam
  moments), as if it were trained alone.

  >>> import jax.numpy as jnp
  >>> tx = per_task_optimizer({"a": optax.sgd(1.0), "b": optax.sgd(0.5)})
  >>> params = {"a": jnp.ones(2), "b": jnp.ones(2)}
  >>> updates, _ = tx.update(params, tx.init(params), params)
  >>> updates["a"].tolist(), updates["b"].tolist()
  ([-1.0, -1.0], [-0.5, -0.5])
  """
  def init_fn(params):
    return {name: tx.init(params[name]) for name, tx in optimizers.items()}

  def update_fn(updates, state, params=None):
    out = {name: tx.update(updates[name], state[name], None if params is None else params[name])
           for name, tx in optimizers.items()}
    return ({name: u for name, (u, _) in out.items()}, {name: s for name, (_, s) in out.items()})

  return optax.GradientTransformation(init_fn, update_fn)
