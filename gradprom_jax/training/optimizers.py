"""The optimisers of a run: the enhancer's (combiner → clipping → AdamW → optional parameter
average) and the recognisers' (clipping → AdamW, one such per task's recogniser)."""
from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import optax

from gradprom_jax.core.task_config import TaskConfig
from gradprom_jax.methods import MethodChoice, build_combiner
from gradprom_jax.training.params_ema import params_ema
from gradprom_jax.training.phases import Phase


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """The optimisers' settings (``config.optim``; read by
  :func:`gradprom_jax.training.training_spec.parse_optimizer_spec`).

  Attributes:
    enhancer_lr, recognizer_lr: each model's peak learning rate.
    warmup_steps: linear warm-up steps of both schedules (then cosine decay to 0).
    weight_decay: AdamW's decoupled weight decay.
    weight_decay_mask: ``"all"`` (every parameter decays) or ``"kernels"`` (:func:`kernels_only`).
    clip_norm: the global-norm clipping of each model's gradient, or None.
    ema_decay: the decay of the enhancer's parameter average, or None (off).

  >>> OptimizerSpec(enhancer_lr=1e-3, recognizer_lr=1e-3).weight_decay_mask
  'all'
  """
  enhancer_lr: float
  recognizer_lr: float
  warmup_steps: int = 0
  weight_decay: float = 0.0
  weight_decay_mask: Literal["all", "kernels"] = "all"
  clip_norm: float | None = None
  ema_decay: float | None = None


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


def _adamw(optim: OptimizerSpec, peak_lr: float, total_steps: int):
  # inject_hyperparams exposes the current learning rate in the state, so the loop can log it; the
  # mask is a function of the params, not a schedule, hence static.
  mask = {"mask": kernels_only} if optim.weight_decay_mask == "kernels" else {}
  return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=learning_rate_schedule(peak_lr, optim.warmup_steps, total_steps),
      weight_decay=optim.weight_decay, **mask)


def _clipping(optim: OptimizerSpec) -> list[optax.GradientTransformation]:
  return [] if optim.clip_norm is None else [optax.clip_by_global_norm(optim.clip_norm)]


def make_enhancer_tx(optim: OptimizerSpec, phases: tuple[Phase, ...], method: MethodChoice,
                     tasks: TaskConfig) -> optax.GradientTransformationExtraArgs:
  """The enhancer's optimiser: ``method``'s combiner (when a phase combines g_e and g_t; built for
  ``tasks``), clipping, AdamW with a warm-up cosine schedule over the steps that update the
  enhancer, and with ``optim.ema_decay`` a moving average of the parameters (evaluation uses it).

  >>> from gradprom_jax.configuration.config import base_config
  >>> from gradprom_jax.configuration.run_spec import parse_run_config
  >>> from gradprom_jax.training.phases import Phase
  >>> run = parse_run_config(base_config())
  >>> phases = (Phase("gradprom", 0, 10, "separate", True, "enhanced"),)
  >>> tx = make_enhancer_tx(OptimizerSpec(1e-3, 1e-3), phases, run.method, run.tasks)
  >>> isinstance(tx, optax.GradientTransformationExtraArgs)
  True
  """
  updates = sum(p.end - p.start for p in phases if p.enhancer_gradient != "none")
  members = []
  if any(p.enhancer_gradient == "separate" for p in phases):
    members.append(build_combiner(method, tasks))
  members += _clipping(optim)
  members.append(_adamw(optim, optim.enhancer_lr, updates))
  if optim.ema_decay:   # None or 0: off
    members.append(params_ema(optim.ema_decay))
  return optax.chain(*members)


def make_recognizer_tx(optim: OptimizerSpec, phases: tuple[Phase, ...],
                       tasks: TaskConfig) -> optax.GradientTransformation:
  """The recognisers' optimiser: clipping and AdamW over the steps that update the recognisers,
  one per task (clipped by its own gradient's norm) over params by task name: see
  :func:`per_task_optimizer`.
  """
  updates = sum(p.end - p.start for p in phases if p.update_recognizer)
  def one():
    return optax.chain(*_clipping(optim), _adamw(optim, optim.recognizer_lr, updates))
  return per_task_optimizer({name: one() for name in tasks.names})


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
