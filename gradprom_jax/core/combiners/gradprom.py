"""GradProm: add the task gradient to the enhancer's update only when it agrees with the enhancement one.

Zhang & Cheng, "Generalized Task-Driven Medical Image Quality Enhancement with Gradient Promotion",
IEEE TPAMI 2025 (arXiv:2501.01114); the binary ("unweighted") rule of Du et al. 2018, "Adapting
Auxiliary Losses Using Gradient Similarity" (arXiv:1812.02224), whose weighted rule is ``mode="soft"``.

With g_e = ∇θ L_enh and g_t = ∇θ L_task (back-propagated through the recogniser into the enhancer):

    d = g_e + w · λ g_t,    w = 1[cos(g_e, g_t) > τ]    (hard, the paper's rule)
                            w = max(cos, 0)·1[cos > τ]  (soft, Du et al.'s weighted variant)

For τ ≥ 0 this gives ⟨d, g_e⟩ ≥ ‖g_e‖²: d is a descent direction for L_enh at least as steep as g_e
alone, so the recogniser never biases the enhancer's optimisation direction. Per-leaf decisions keep
the guarantee (each block's inner product is at least its own squared norm). Gating also on a moving
average of the cosine (``cosine_ema=β``, ours), or on the cosine of moving averages of g_e and g_t
(``gradient_ema=β``, ours; :mod:`~gradprom_jax.core.combiners.moment_gate`), keeps it too: the average
can only close a gate.

τ < 0 is refused for the hard gate: it would add conflicting task gradients (cos ∈ (τ, 0]), breaking
the guarantee, and open on an undefined cosine (reported as 0), adding a zero or non-finite g_t. The
soft gate accepts it, harmlessly: its weight max(cos, 0) is 0 wherever cos ≤ 0, so any τ < 0 gives
exactly the updates of τ = 0.

Several tasks (``tasks=K``, e.g. lesion masks and a diagnosis for the same images) are gated each on
its own against g_e, with its own options (λ_k, τ_k, mode, granularity, task_scale):

    d = g_e + Σ_k w_k · λ_k s_k g_t,k,    w_k = the gate of task k, from cos(g_e, g_t,k) and τ_k

**The guarantee holds for any K.** ⟨d, g_e⟩ = ‖g_e‖² + Σ_k Σ_b w_k,b λ_k s_k,b ⟨g_t,k,b, g_e,b⟩,
where b runs over task k's blocks (one, the whole tree, for a global task; each leaf for a per-leaf
one) and s_k,b ≥ 0 is its task_scale factor. A term is non-zero only where w_k,b > 0, that is (hard
or soft gate, with or without the moving average, which only closes gates) where
cos(g_e,b, g_t,k,b) > τ_k ≥ 0, so ⟨g_t,k,b, g_e,b⟩ > 0 there; with λ_k ≥ 0 every term is ≥ 0, and
⟨d, g_e⟩ ≥ ‖g_e‖². The soft gate's weight max(cos, 0) is ≥ 0 too, so the sum of soft terms is the
same argument. When every task is per-leaf the bound holds in every leaf (⟨d_b, g_e,b⟩ ≥ ‖g_e,b‖²);
a global task's term is only bounded over the whole tree. Tasks are not gated against each other:
two open tasks may conflict with each other, never with g_e.
"""
from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners import gradient_geometry as geometry
from gradprom_jax.core.combiners.accumulation import check_not_in_optax_multisteps
from gradprom_jax.core.combiners.moment_gate import init_moment_state, next_moments_and_cosine
from gradprom_jax.core.combiners.skeleton import check_task_grads
from gradprom_jax.core.combiners.state import (CombinerState, GradPromEmaState, GradPromMomentState,
                                               init_combiner_state, next_combiner_state,
                                               next_cosine_ema)
from gradprom_jax.core.combiners.tasks import TaskSpec, resolve_tasks

GateMode = Literal["hard", "soft"]
GATE_MODES = ("hard", "soft")
TaskScale = Literal["none", "enhancement_norm"]
TASK_SCALES = ("none", "enhancement_norm")

# GradProm's state is the state shared by all combiners; the alias names it for readers of the paper.
GradPromState = CombinerState


def gate_weight(cosine: jax.Array, mode: GateMode, threshold: float | jax.Array) -> jax.Array:
  """The weight given to the task gradient for a block whose cosine is ``cosine``.

  ``cosine == threshold`` keeps the gate closed: a gradient orthogonal to g_e is not "aligned".

  >>> import jax.numpy as jnp
  >>> [float(gate_weight(jnp.float32(c), "hard", 0.0)) for c in (-0.5, 0.0, 0.5)]
  [0.0, 0.0, 1.0]
  >>> [float(gate_weight(jnp.float32(c), "soft", 0.0)) for c in (-0.5, 0.0, 0.5)]
  [0.0, 0.0, 0.5]
  """
  is_open = cosine > jnp.asarray(threshold, jnp.float32)
  if mode == "hard":
    return is_open.astype(jnp.float32)
  if mode == "soft":
    return jnp.where(is_open, jnp.maximum(cosine, 0.0), 0.0)
  raise ValueError(f"Unknown gate mode {mode!r}; expected one of {GATE_MODES}.")


def check_threshold(threshold: float | jax.Array, mode: GateMode) -> None:
  """Refuses τ < 0 with the hard gate (it breaks the descent guarantee; see the module docstring).

  Only a Python number can be checked here; an injected (traced) threshold is the caller's to keep
  non-negative.

  >>> check_threshold(-0.1, "soft")
  >>> check_threshold(-0.1, "hard")
  Traceback (most recent call last):
  ...
  ValueError: threshold=-0.1 < 0 with mode='hard' opens the gate on conflicting gradients and on undefined cosines, breaking the descent guarantee: use a threshold >= 0 (0 is the paper's rule).
  """
  if mode == "hard" and isinstance(threshold, (int, float)) and threshold < 0:
    raise ValueError(
        f"threshold={threshold} < 0 with mode='hard' opens the gate on conflicting gradients and on "
        "undefined cosines, breaking the descent guarantee: use a threshold >= 0 (0 is the paper's "
        "rule).")


class GateOptions(NamedTuple):
  """One task's options of :func:`gradprom` (the per-task values of its arguments)."""
  task_weight: Any
  threshold: Any
  granularity: geometry.Granularity
  mode: GateMode
  task_scale: TaskScale

  def check(self) -> None:
    """Raises ValueError for an option out of its range (a traced number is the caller's to keep)."""
    geometry.check_granularity(self.granularity)
    if self.mode not in GATE_MODES:
      raise ValueError(f"Unknown gate mode {self.mode!r}; expected one of {GATE_MODES}.")
    if self.task_scale not in TASK_SCALES:
      raise ValueError(f"Unknown task_scale {self.task_scale!r}; expected one of {TASK_SCALES}.")
    if isinstance(self.task_weight, (int, float)) and self.task_weight < 0:
      raise ValueError(f"task_weight must be >= 0, got {self.task_weight}.")
    check_threshold(self.threshold, self.mode)


def gradprom(
    task_weight: Any = 1.0,
    threshold: Any = 0.0,
    *,
    granularity: geometry.Granularity | tuple | dict = "global",
    mode: GateMode | tuple | dict = "hard",
    task_scale: TaskScale | tuple | dict = "none",
    cosine_ema: float | None = None,
    gradient_ema: float | None = None,
    tasks: TaskSpec = None,
) -> optax.GradientTransformationExtraArgs:
  """Gradient promotion: ``g_e + gate(cos(g_e, g_t)) · task_weight · g_t``.

  ``updates`` are the enhancement gradients g_e; the task gradients g_t (same tree) arrive as the
  keyword-only extra argument ``task_grads``. Cosines, inner products and norms are computed in float32
  whatever the gradients' dtype; outputs keep the input dtype. A zero, tiny or non-finite task gradient
  never produces NaN: an undefined cosine counts as 0, so the gate stays closed and g_e passes unchanged.

  Put ``gradprom()`` first in an ``optax.chain`` (it must see the raw g_e and g_t, before clipping or
  Adam rescale one and not the other). To accumulate gradients over micro-batches, wrap the chain in
  :func:`~gradprom_jax.core.combiners.accumulation.multi_steps` (``gradprom_jax.multi_steps``), which
  averages ``task_grads`` as well as g_e, or in the train step set config ``accumulate_steps``
  (the same update). ``optax.MultiSteps`` averages g_e but passes each call's own ``task_grads``, so
  the gate would compare the mean g_e with the last micro-batch's g_t: ``update`` refuses to run
  inside it (it sees ``optax.MultiSteps.update`` among its callers, eagerly or while tracing).

  Args:
    task_weight: λ, multiplying g_t (≥ 0; may be injected with ``optax.inject_hyperparams``).
    threshold: τ; the gate opens when cos > τ (strictly). The descent guarantee needs τ ≥ 0, so a
      negative τ is refused for ``mode="hard"``; for ``mode="soft"`` it acts as τ = 0.
    granularity: ``"global"``: one cosine over the whole tree (Du et al. 2018); ``"per_leaf"``: one
      cosine and gate per parameter array.
    mode: ``"hard"``: gate ∈ {0, 1} (the paper's rule); ``"soft"``: gate = max(cos, 0) where open
      (the weighted variant of Du et al. 2018).
    task_scale: ``"none"``: add λ g_t as it is (the paper's rule); ``"enhancement_norm"``: add
      λ (‖g_e‖/‖g_t‖) g_t, g_t rescaled to g_e's norm in each block, so an open gate adds at most
      λ‖g_e‖ to the step whatever the losses' scales (an option of ours, not the paper's: where
      ‖g_t‖ dwarfs ‖g_e‖, open steps otherwise swamp g_e under clipping and Adam; see RESULTS.md).
      The gate, and so the descent guarantee, is unchanged.
    cosine_ema: β ∈ [0, 1); None or 0 (the paper's rule) gates on each step's cosine alone. β > 0 (an option
      of ours, for small batches whose per-step cosine is mostly noise) also requires the
      bias-corrected moving average EMA_t = β EMA_{t-1} + (1 − β) cos_t to exceed τ:
      gate_t = w(cos_t) · 1[EMA_t > τ], with w the gate above. The average can only close a gate the
      step itself would open, so the per-step guarantee holds exactly: **for τ ≥ 0, every update has
      ⟨d, g_e⟩ ≥ ‖g_e‖² in every block**, because ⟨d, g_e⟩ = ‖g_e‖² + gate·λ·s·⟨g_t, g_e⟩ (s > 0 the
      task_scale factor) and gate > 0 only where cos_t > τ ≥ 0. A Python float, as it decides the
      state's structure (to pass it through ``inject_hyperparams``, list it in ``static_args``).
      With several tasks, each task keeps its own average.
    gradient_ema: β ∈ [0, 1); None or 0 (the paper's rule): off. β > 0 (ours, for the same noisy
      small batches) averages the *gradients* rather than the cosine, m_e ← β m_e + (1 − β) g_e and
      m_t ← β m_t + (1 − β) g_t, and also requires cos(m_e, m_t) > τ: gate_t = w(cos_t) ·
      1[cos(m_e, m_t) > τ]. Like ``cosine_ema`` it only closes gates, so the same per-step guarantee
      holds. The moments are not bias-corrected: the correction scales both alike and leaves their
      cosine unchanged. **Memory:** two float32 copies of the enhancer's gradient tree per task in
      the optimiser state (the optimiser's own first moment averages the combined update, not g_e
      and g_t apart, so it cannot stand in). Exclusive with ``cosine_ema`` (two averages of the same
      noise would confound each other's effect). A Python float (it decides the state's structure).
    tasks: None for one task (``task_grads`` one tree), else the number of tasks (``task_grads`` a
      tuple of trees) or their names (a dict by name); implied by any per-task option. Each of
      ``task_weight``, ``threshold``, ``granularity``, ``mode`` and ``task_scale`` is then one value for
      every task or a tuple/dict with one per task. Fixes the state's structure: under
      ``inject_hyperparams``, list it in ``static_args``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`CombinerState`, or with
    ``cosine_ema > 0`` a :class:`GradPromEmaState` holding one, with ``gradient_ema > 0`` a
    :class:`GradPromMomentState` holding one (`find_combiner_state` finds it); for
    several tasks, a :class:`~gradprom_jax.core.combiners.tasks.MultiTaskState` of one such state per task
    (``find_combiner_metrics`` logs ``cosine/<task>``, ``gate/<task>``, ...).

  >>> import jax.numpy as jnp, optax
  >>> tx = optax.chain(gradprom(), optax.sgd(0.1))
  >>> params = {"w": jnp.zeros(2)}
  >>> state = tx.init(params)
  >>> g_e = {"w": jnp.array([1.0, 0.0])}
  >>> aligned, opposed = {"w": jnp.array([1.0, 1.0])}, {"w": jnp.array([-1.0, 1.0])}
  >>> tx.update(g_e, state, params, task_grads=aligned)[0]["w"]
  Array([-0.2, -0.1], dtype=float32)
  >>> tx.update(g_e, state, params, task_grads=opposed)[0]["w"]
  Array([-0.1, -0. ], dtype=float32)

  Two tasks, each gated on its own: the aligned one is added (with its λ), the opposed one is not.

  >>> tx = gradprom(task_weight={"masks": 1.0, "diagnosis": 0.5})
  >>> g_t = {"masks": opposed, "diagnosis": aligned}
  >>> update, state = tx.update(g_e, tx.init(params), task_grads=g_t)
  >>> update["w"], float(state.tasks["masks"].gate), float(state.tasks["diagnosis"].gate)
  (Array([1.5, 0.5], dtype=float32), 0.0, 1.0)
  """
  resolved = resolve_tasks(tasks, task_weight=task_weight, threshold=threshold,
                           granularity=granularity, mode=mode, task_scale=task_scale)
  options = [GateOptions(*values) for values in zip(*(
      resolved.option(name, value) for name, value in (
          ("task_weight", task_weight), ("threshold", threshold), ("granularity", granularity),
          ("mode", mode), ("task_scale", task_scale))))]
  for task_options in options:
    task_options.check()
  for name, decay in (("cosine_ema", cosine_ema), ("gradient_ema", gradient_ema)):
    if decay is not None and (not isinstance(decay, (int, float)) or not 0 <= decay < 1):
      raise ValueError(f"{name} must be a Python float in [0, 1) (0: off), got {decay!r}; "
                       "under inject_hyperparams, list it in static_args.")
  use_ema, use_moments = bool(cosine_ema), bool(gradient_ema)
  if use_ema and use_moments:
    raise ValueError(f"cosine_ema={cosine_ema} and gradient_ema={gradient_ema}: choose one moving "
                     "average to gate on (set the other to 0).")

  def init_task(params, task: GateOptions):
    state = init_combiner_state(params, per_leaf=task.granularity == "per_leaf")
    if use_moments:
      return init_moment_state(state, params)
    # A buffer of its own (not state.cosine itself): a donated train step refuses a state in
    # which two leaves share one buffer.
    return (GradPromEmaState(state, cosine_ema=jax.tree.map(jnp.zeros_like, state.cosine))
            if use_ema else state)

  def init_fn(params):
    return resolved.join_states([init_task(params, task) for task in options])

  def decide(updates, task_grads, state, task: GateOptions):
    """One task's term λ·gate·g_t (a float32 tree like g_e) and its next state."""
    combiner_state = state.combiner if use_ema or use_moments else state
    cosine = geometry.cosine_similarity(updates, task_grads, task.granularity)
    gate = jax.tree.map(lambda c: gate_weight(c, task.mode, task.threshold), cosine)
    if use_ema:
      smoothed = jax.tree.map(
          lambda m, c: next_cosine_ema(m, c, combiner_state.count, cosine_ema),
          state.cosine_ema, cosine)
    if use_moments:
      enhancement_moment, task_moment, smoothed = next_moments_and_cosine(
          state.enhancement_moment, state.task_moment, updates, task_grads, gradient_ema,
          task.granularity)
    if use_ema or use_moments:
      # The average only closes gates (never opens one), so each step keeps its descent guarantee.
      threshold = jnp.asarray(task.threshold, jnp.float32)
      gate = jax.tree.map(lambda g, m: jnp.where(m > threshold, g, 0.0), gate, smoothed)
    weight = jax.tree.map(lambda g: g * jnp.asarray(task.task_weight, jnp.float32), gate)
    if task.task_scale == "enhancement_norm":
      weight = jax.tree.map(jnp.multiply, weight,
                            geometry.norm_ratio(updates, task_grads, task.granularity))
    if task.granularity == "per_leaf":
      term = jax.tree.map(geometry.scaled, task_grads, weight)
    else:
      term = jax.tree.map(lambda t: geometry.scaled(t, weight), task_grads)
    new_state = next_combiner_state(combiner_state, cosine, gate)
    if use_ema:
      return term, GradPromEmaState(new_state, cosine_ema=smoothed)
    if use_moments:
      return term, GradPromMomentState(new_state, enhancement_moment, task_moment, smoothed)
    return term, new_state

  def update_fn(updates, state, params=None, *, task_grads=None, **extra_args):
    del params, extra_args
    check_not_in_optax_multisteps("gradprom")
    check_task_grads(updates, task_grads, "gradprom", resolved)
    terms, new_states = zip(*(
        decide(updates, g_t, task_state, task) for g_t, task_state, task in zip(
            resolved.split(task_grads), resolved.split_states(state), options)))
    return geometry.add_terms(updates, list(terms)), resolved.join_states(new_states)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
