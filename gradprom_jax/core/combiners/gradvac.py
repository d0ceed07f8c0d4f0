"""Gradient Vaccine: raise the task gradient's cosine with g_e to a moving target (Wang et al. 2021).

Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and Improving Multi-task Optimization in
Massively Multilingual Models", ICLR 2021 (arXiv:2010.05874). Where PCGrad only removes a conflict
(cos < 0), GradVac sets an adaptive target φ̂ for the cosine, an EMA of the cosines it has seen, and
whenever φ = cos(g_e, g_t) < φ̂ adds the multiple of g_e that lifts the cosine to exactly φ̂:

    g_t' = g_t + g_e · ‖g_t‖(φ̂√(1 − φ²) − φ√(1 − φ̂²)) / (‖g_e‖√(1 − φ̂²))    (g_t' = g_t when φ ≥ φ̂)
    φ̂ ← (1 − β) φ̂ + β φ,        d = g_e + λ g_t'

φ̂ starts at 0, so until it moves GradVac is PCGrad (lifting a negative cosine to 0 is projecting out
the conflicting component). The adjustment uses φ̂ from before the update, then φ̂ moves.

**Form chosen here.** The paper vaccinates every pair of tasks symmetrically; here g_e is the
mainstream task and is never modified (like PCGrad's asymmetric form in
:func:`~gradprom_jax.core.combiners.baselines.pcgrad`), and with several tasks each g_t,k is
vaccinated towards g_e alone, with its own target φ̂_k (tasks are not vaccinated against each other):
d = g_e + Σ_k λ_k g_t,k'. The cosine is of the whole tree, one vector.

A zero or non-finite g_e or g_t leaves the cosine undefined: nothing is adjusted and φ̂ does not move;
a non-finite g_t is left out (d = g_e, as a zero one gives). A target of exactly 1 (only reached when
every cosine seen was 1) is read as 1 − 5·10⁻¹³ so the division stays finite.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners import gradient_geometry as geometry
from gradprom_jax.core.combiners.accumulation import check_not_in_optax_multisteps
from gradprom_jax.core.combiners.skeleton import check_task_grads
from gradprom_jax.core.combiners.state import (GradVacState, init_combiner_state,
                                               next_combiner_state)
from gradprom_jax.core.combiners.tasks import PerTask, TaskSpec, check_task_weights, resolve_tasks


def vaccinated_coefficient(cosine: jax.Array, target: jax.Array, norm_ratio: jax.Array) -> jax.Array:
  """The multiple of g_e to add to g_t so that cos(g_e, g_t') = ``target``, given cos(g_e, g_t) =
  ``cosine`` and ‖g_t‖/‖g_e‖ = ``norm_ratio`` (GradVac's formula; 0 where ``cosine`` ≥ ``target``).

  >>> import jax.numpy as jnp
  >>> round(float(vaccinated_coefficient(jnp.float32(-0.5), jnp.float32(0.0), 2.0)), 3)   # PCGrad's
  1.0
  """
  cosine, target = jnp.asarray(cosine, jnp.float32), jnp.asarray(target, jnp.float32)
  sin = jnp.sqrt(jnp.maximum(1.0 - cosine * cosine, 0.0))
  target_sin = jnp.sqrt(jnp.maximum(1.0 - target * target, 1e-12))
  coefficient = norm_ratio * (target * sin - cosine * target_sin) / target_sin
  return jnp.where(cosine < target, coefficient, 0.0)


def gradvac(task_weight: PerTask = 1.0, beta: PerTask = 0.01, *,
            tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """Gradient Vaccine: lift cos(g_e, g_t) to its moving target φ̂ before adding λ g_t (Wang et al. 2021).

  See :mod:`~gradprom_jax.core.combiners.gradvac` for the rule and the multi-task form (each task
  vaccinated towards g_e, which is kept). ``updates`` are g_e, ``task_grads`` g_t (one tree, or a
  tuple/dict of trees for ``tasks``); cosines and norms in float32 at ``Precision.HIGHEST``, the output
  in the input dtype. A zero or non-finite task gradient gives d = g_e.

  Args:
    task_weight: λ ≥ 0 multiplying the vaccinated g_t'; one, or one per task.
    beta: β ∈ [0, 1], the EMA rate of the target φ̂ (the paper's 1e-2); one, or one per task.
    tasks: the tasks combined (see :func:`~gradprom_jax.core.combiners.tasks.resolve_tasks`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`GradVacState` (for several
    tasks, a :class:`~gradprom_jax.core.combiners.tasks.MultiTaskState` of one per task).

  >>> import jax.numpy as jnp
  >>> tx = gradvac(beta=0.5)
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([-1.0, 1.0])
  >>> d, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)   # φ̂ = 0: PCGrad's projection
  >>> d.round(4), round(float(state.target_cosine), 3)
  (Array([1., 1.], dtype=float32), -0.354)
  """
  resolved = resolve_tasks(tasks, task_weight=task_weight, beta=beta)
  weights = resolved.option("task_weight", task_weight)
  betas = resolved.option("beta", beta)
  check_task_weights(weights)
  for rate in betas:
    if isinstance(rate, (int, float)) and not 0 <= rate <= 1:
      raise ValueError(f"beta must be in [0, 1], got {rate}.")

  def init_fn(params):
    return resolved.join_states([GradVacState(init_combiner_state(params), jnp.zeros([], jnp.float32))
                                 for _ in resolved.names])

  def vaccinate(updates: Any, task_grads: Any, state: GradVacState, task: int):
    """One task's term λ g_t' (a float32 tree like g_e) and its next state."""
    cosine = geometry.cosine_similarity(updates, task_grads)
    norm_ratio = geometry.norm_ratio(task_grads, updates)   # 0 where either is zero or non-finite
    defined = norm_ratio > 0
    target = state.target_cosine
    coefficient = jnp.where(defined, vaccinated_coefficient(cosine, target, norm_ratio), 0.0)
    finite = geometry.is_finite(task_grads)
    weight = jnp.asarray(weights[task], jnp.float32)

    def term(e, t):
      vaccinated = geometry.scaled(t, weight) + geometry.scaled(e, weight * coefficient)
      return jnp.where(finite, vaccinated, 0.0)

    rate = jnp.asarray(betas[task], jnp.float32)
    new_target = jnp.where(defined, (1.0 - rate) * target + rate * cosine, target)
    unchanged = (finite & (coefficient == 0)).astype(jnp.float32)
    new_state = GradVacState(next_combiner_state(state.combiner, cosine, unchanged), new_target)
    return jax.tree.map(term, updates, task_grads), new_state

  def update_fn(updates, state, params=None, *, task_grads=None, **extra_args):
    del params, extra_args
    check_not_in_optax_multisteps("gradvac")
    check_task_grads(updates, task_grads, "gradvac", resolved)
    terms, new_states = zip(*(
        vaccinate(updates, g_t, task_state, task) for task, (g_t, task_state) in enumerate(zip(
            resolved.split(task_grads), resolved.split_states(state)))))
    return geometry.add_terms(updates, list(terms)), resolved.join_states(new_states)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
