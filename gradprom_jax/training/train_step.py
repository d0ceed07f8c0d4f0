"""One training step, as a pure function of (state, batch): the paper's algorithm box.

    x_lq = degrade(x_hq)                          on device, seeded per example
    y, pullback = vjp(enhancer_θ, x_lq)           ONE enhancer forward pass
    ∂L_enh/∂y, ∂L_k/∂y, ∇φ_k L_k                  losses on the enhanced image y, per task k
    g_e, g_t,k = pullback(∂L_enh/∂y), pullback(∂L_k/∂y)     (K + 1 pull-backs, one forward)
    θ ← θ + enhancer_tx(g_e, task_grads=g_t)      GradProm or a baseline combiner, then AdamW
    φ_k ← φ_k + recognizer_tx(∇φ_k L_k)           each recogniser with its own optimiser

Every per-task value (g_t, ∇φ_k, L_k, the recognisers' params and optimiser states) is a dict by
task name, one entry for one task, and the combiner gates each g_t,k against g_e on its own. Joint
training pulls back one summed cotangent ∂L_enh/∂y + Σ_k λ_k ∂L_k/∂y: exactly g_e + Σ_k λ_k g_t,k,
at one pull-back's cost.

A phase's ``enhancer_gradient`` picks one gradient mode, each a short builder over the same shared
forward pass (:data:`GRADIENT_MODES`): ``"separate"`` (g_e and g_t,k for the combiner),
``"summed"`` (the summed cotangent), ``"enhancement"`` (g_e alone) and ``"none"`` (the recognisers
alone, on the frozen enhancer's outputs or the high-quality images).

With ``accumulate_steps = k`` the gradients (g_e, g_t and the recognisers') are averaged over k
micro-batches before the updates, so GradProm's cosine is taken on the accumulated gradients.
Every mode (1 device, ``pmap`` or a mesh over several, k micro-batches) computes the gradients of
the one global batch: a class-weighted loss's Σ w is the global batch's (see ``train_step``).

The data-parallel wrapper is applied outside (:mod:`gradprom_jax.training.parallel`): under ``jax.pmap`` the
step is given ``axis_name`` and averages every gradient across devices *before* the combiner, so all
devices take the same gating decision; under ``jax.jit`` on a mesh gradients are already global.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners import find_combiner_metrics
from gradprom_jax.core.image_dtype import with_float_images
from gradprom_jax.core.system import TaskDrivenSystem
from gradprom_jax.training.example_ids import example_ids as batch_example_ids
from gradprom_jax.training.gradient_accumulation import (accumulate_gradients,
                                                         check_not_wrapped_in_multisteps)
from gradprom_jax.training.phases import Phase
from gradprom_jax.training.train_state import TrainState

Batch = dict[str, jax.Array]


def task_losses_and_gradients(system: TaskDrivenSystem, recognizer_params: Any,
                              images: jax.Array, batch: Batch, *, image_gradients: bool = True,
                              normalizers: Any = None) -> tuple[Any, Any, Any]:
  """Every task's loss on ``images``, its recogniser's gradient and (``image_gradients``) the
  loss's gradient with respect to ``images``, each a dict by task name. Without
  ``image_gradients`` the third is None. ``normalizers`` (by task name; None: each loss's own)
  divide the class-weighted losses' Σ w·ℓ.
  """
  values, phi_grads, image_grads = {}, {}, {}
  for head in system.heads:
    normalizer = None if normalizers is None else normalizers[head.name]
    def loss(phi, y, head=head, normalizer=normalizer):
      return head.loss(head.recognize(phi, y, train=True), batch, normalizer)
    phi = recognizer_params[head.name]
    if image_gradients:
      values[head.name], (phi_grads[head.name], image_grads[head.name]) = jax.value_and_grad(
          loss, argnums=(0, 1))(phi, images)
    else:
      values[head.name], phi_grads[head.name] = jax.value_and_grad(loss)(phi, images)
  return values, phi_grads, image_grads if image_gradients else None


@dataclasses.dataclass(frozen=True)
class SharedForward:
  """One enhancer forward pass and every loss's cotangent at its output y, before any pull-back.

  Attributes:
    enhanced: y = enhancer_θ(x_lq).
    pullback: maps a cotangent at y to the enhancer's gradient (a one-tuple, as ``jax.vjp``'s).
    enhancement_loss, d_enhancement: L_enh and ∂L_enh/∂y.
    task_loss, recognizer_grads, d_task: every task's L_k, ∇φ_k L_k and ∂L_k/∂y, by task name.
  """
  enhanced: jax.Array
  pullback: Callable[[jax.Array], tuple[Any]]
  enhancement_loss: jax.Array
  d_enhancement: jax.Array
  task_loss: Any
  recognizer_grads: Any
  d_task: Any


def shared_forward(system: TaskDrivenSystem, enhancer_params: Any, recognizer_params: Any,
                   low_quality: jax.Array, batch: Batch, normalizers: Any = None) -> SharedForward:
  """The enhancer's forward pass on ``low_quality`` (kept for pull-backs) and the losses on its
  output. ``normalizers``: as in :func:`task_losses_and_gradients`."""
  enhanced, pullback = jax.vjp(lambda p: system.enhance(p, low_quality, train=True), enhancer_params)
  enhancement_loss, d_enhancement = jax.value_and_grad(system.enhancement_loss)(
      enhanced, batch["image"])
  task_loss, recognizer_grads, d_task = task_losses_and_gradients(
      system, recognizer_params, enhanced, batch, normalizers=normalizers)
  return SharedForward(enhanced, pullback, enhancement_loss, d_enhancement, task_loss,
                       recognizer_grads, d_task)


def shared_forward_gradients(system: TaskDrivenSystem, enhancer_params: Any, recognizer_params: Any,
                             low_quality: jax.Array, batch: Batch, normalizers: Any = None
                             ) -> dict[str, Any]:
  """g_e = ∇θ L_enh and g_t,k = ∇θ L_k (every task k) from one enhancer forward pass.

  Every cotangent at the enhanced image is pulled back through the same ``jax.vjp`` closure, so
  the enhancer's activations are computed once. The pull-backs run one after the other: vmapping
  them over the stacked cotangents was as fast or slower on CPU (XLA batches the weight-gradient
  convolutions poorly; see BENCHMARKS.md). ``normalizers``: as in :func:`task_losses_and_gradients`.

  Returns:
    A dict with ``enhancement_loss``, ``task_loss``, ``enhanced``, ``enhancement_grads`` (g_e),
    ``task_grads`` (g_t, unweighted) and ``recognizer_grads`` (∇φ L_task on the enhanced image);
    per-task values (task loss, g_t, ∇φ) dicts by task name.
  """
  forward = shared_forward(system, enhancer_params, recognizer_params, low_quality, batch,
                           normalizers)
  enhancement_grads = forward.pullback(forward.d_enhancement)[0]
  task_grads = {name: forward.pullback(d)[0] for name, d in forward.d_task.items()}
  return {
      "enhancement_loss": forward.enhancement_loss, "task_loss": forward.task_loss,
      "enhanced": forward.enhanced, "enhancement_grads": enhancement_grads,
      "task_grads": task_grads, "recognizer_grads": forward.recognizer_grads,
  }


def summed_cotangent(system: TaskDrivenSystem, d_enhancement: jax.Array,
                     d_task: Mapping[str, jax.Array], task_weight: Mapping[str, float]
                     ) -> jax.Array:
  """∂L_enh/∂y + Σ_k λ_k ∂L_k/∂y: pulled back once, it gives g_e + Σ_k λ_k g_t,k (linearity)."""
  cotangent = d_enhancement
  for head in system.heads:
    cotangent = cotangent + task_weight[head.name] * d_task[head.name]
  return cotangent


def task_metrics(system: TaskDrivenSystem, key: str, per_task: Mapping[str, Any],
                 value_of=lambda x: x) -> dict[str, jax.Array]:
  """``{key: value}`` for a run of the single-task form; ``{key/<task>: value}`` per task of the
  multi-task form (:meth:`TaskDrivenSystem.metric_key`)."""
  return {system.metric_key(key, head): value_of(per_task[head.name]) for head in system.heads}


def _all_finite(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _learning_rate(opt_state: Any) -> jax.Array:
  """The current learning rate of the (single) ``inject_hyperparams`` optimiser in ``opt_state``."""
  is_injected = lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)
  injected = [s for s in jax.tree.leaves(opt_state, is_leaf=is_injected) if is_injected(s)]
  return jnp.asarray(injected[0].hyperparams["learning_rate"], jnp.float32)


class StepGradients(NamedTuple):
  """A (micro-)batch's gradients, averaged over micro-batches and devices before any update.

  Attributes:
    enhancement_grads: what ``enhancer_tx`` updates the enhancer with; None: not updated.
    task_grads: the combiner's ``task_grads`` (g_t by task name); None: the step combines nothing.
    recognizer_terms: the recognisers' gradients on each input they train on (averaged).
    metrics: the losses.
  """
  enhancement_grads: Any
  task_grads: Any
  recognizer_terms: list[Any]
  metrics: dict[str, jax.Array]


# A gradient mode's gradients of one (micro-)batch: (state, batch, example ids, normalizers).
GradientsFn = Callable[[TrainState, Batch, jax.Array, Any], StepGradients]


def _low_quality(system: TaskDrivenSystem, state: TrainState, batch: Batch,
                 example_ids: jax.Array) -> jax.Array:
  """x_lq, each example's noise keyed by the step and the id the loader gave it."""
  return system.degrade(jax.random.fold_in(state.key, state.step), batch["image"], example_ids)


def _losses(system: TaskDrivenSystem, enhancement_loss: jax.Array, task_loss: Any
            ) -> dict[str, jax.Array]:
  return {"enhancement_loss": enhancement_loss, **task_metrics(system, "task_loss", task_loss)}


def _with_recognizer_terms(system: TaskDrivenSystem, phase: Phase, state: TrainState, batch: Batch,
                           normalizers: Any, on_enhanced: Any, metrics: dict[str, jax.Array], *,
                           enhancement_grads: Any = None, task_grads: Any = None
                           ) -> StepGradients:
  """The step's gradients with the recognisers' terms ``phase`` trains on: ``on_enhanced`` (∇φ L_k
  on the enhanced images) and ∇φ L_k on the high-quality images."""
  terms = [on_enhanced] if phase.recognizer_input in ("enhanced", "both") else []
  if phase.recognizer_input in ("high_quality", "both") and phase.update_recognizer:
    task_loss, grads, _ = task_losses_and_gradients(
        system, state.recognizer_params, batch["image"], batch, image_gradients=False,
        normalizers=normalizers)
    metrics = {**metrics, **task_metrics(system, "task_loss_high_quality", task_loss)}
    terms.append(grads)
  return StepGradients(enhancement_grads, task_grads, terms, metrics)


def separate_gradients(system: TaskDrivenSystem, phase: Phase, task_weight: Any) -> GradientsFn:
  """g_e and every g_t,k apart, pulled back from one shared forward pass, for the combiner."""
  del task_weight   # λ is the combiner's

  def gradients(state, batch, example_ids, normalizers):
    out = shared_forward_gradients(system, state.enhancer_params, state.recognizer_params,
                                   _low_quality(system, state, batch, example_ids), batch,
                                   normalizers)
    return _with_recognizer_terms(
        system, phase, state, batch, normalizers, out["recognizer_grads"],
        _losses(system, out["enhancement_loss"], out["task_loss"]),
        enhancement_grads=out["enhancement_grads"], task_grads=out["task_grads"])
  return gradients


def summed_gradients(system: TaskDrivenSystem, phase: Phase, task_weight: Any) -> GradientsFn:
  """g_e + Σ_k λ_k g_t,k in one pull-back of the summed cotangent (linearity of the pull-back)."""
  def gradients(state, batch, example_ids, normalizers):
    forward = shared_forward(system, state.enhancer_params, state.recognizer_params,
                             _low_quality(system, state, batch, example_ids), batch, normalizers)
    cotangent = summed_cotangent(system, forward.d_enhancement, forward.d_task, task_weight)
    return _with_recognizer_terms(
        system, phase, state, batch, normalizers, forward.recognizer_grads,
        _losses(system, forward.enhancement_loss, forward.task_loss),
        enhancement_grads=forward.pullback(cotangent)[0])
  return gradients


def enhancement_gradients(system: TaskDrivenSystem, phase: Phase, task_weight: Any
                          ) -> GradientsFn:
  """g_e alone (the task losses are still measured)."""
  del task_weight

  def gradients(state, batch, example_ids, normalizers):
    forward = shared_forward(system, state.enhancer_params, state.recognizer_params,
                             _low_quality(system, state, batch, example_ids), batch, normalizers)
    return _with_recognizer_terms(
        system, phase, state, batch, normalizers, forward.recognizer_grads,
        _losses(system, forward.enhancement_loss, forward.task_loss),
        enhancement_grads=forward.pullback(forward.d_enhancement)[0])
  return gradients


def recognizer_gradients(system: TaskDrivenSystem, phase: Phase, task_weight: Any
                         ) -> GradientsFn:
  """The recognisers alone, on the frozen enhancer's (evaluation-mode) outputs and/or the
  high-quality images, as ``phase`` says; the enhancer is not updated."""
  del task_weight

  def gradients(state, batch, example_ids, normalizers):
    on_enhanced, metrics = None, {}
    if phase.needs_enhancer:
      enhanced = system.enhance(state.enhancer_params,
                                _low_quality(system, state, batch, example_ids), train=False)
      task_loss, on_enhanced, _ = task_losses_and_gradients(
          system, state.recognizer_params, enhanced, batch, image_gradients=False,
          normalizers=normalizers)
      metrics = task_metrics(system, "task_loss", task_loss)
    return _with_recognizer_terms(system, phase, state, batch, normalizers, on_enhanced, metrics)
  return gradients


# Phase.enhancer_gradient -> the builder of that mode's gradients.
GRADIENT_MODES: dict[str, Callable[[TaskDrivenSystem, Phase, Any], GradientsFn]] = {
    "separate": separate_gradients, "summed": summed_gradients,
    "enhancement": enhancement_gradients, "none": recognizer_gradients,
}


def make_train_step(system: TaskDrivenSystem, phase: Phase, *,
                    enhancer_tx: optax.GradientTransformationExtraArgs,
                    recognizer_tx: optax.GradientTransformation,
                    task_weight: Mapping[str, float],
                    axis_name: str | None = None, accumulate_steps: int = 1
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The train step of ``phase``: ``(state, batch) -> (state, metrics)``.

  A step whose losses or gradients are not finite changes neither parameters nor optimiser states;
  it only increments ``step`` and the non-finite counters (the loop stops after too many in a row).

  Args:
    system: the models, degradation and losses.
    phase: what this step updates, and how (see :class:`~gradprom_jax.training.phases.Phase`).
    enhancer_tx, recognizer_tx: the two optimisers (the combiner is inside ``enhancer_tx``).
    task_weight: ``{task: λ_k}``, used where the step itself sums the task cotangents
      (``"summed"`` phases); ``"separate"`` phases leave λ to the combiner.
    axis_name: the ``pmap`` axis to average gradients over, or None under ``jit``.
    accumulate_steps: k; the (per-device) batch is split into k micro-batches whose gradients
      (g_e, g_t and the recogniser's) are averaged in a ``lax.scan`` before the combiner and the
      optimisers run once: the update of one k times larger batch, with 1/k of the activations.
  """
  def mean_over_devices(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  gradients = GRADIENT_MODES[phase.enhancer_gradient](system, phase, task_weight)

  def train_step(state: TrainState, batch: Batch):
    check_not_wrapped_in_multisteps(state.enhancer_opt_state)
    batch = with_float_images(batch)   # the loader's uint8 images, as float32 in [0, 1]
    # The ids the loader gave the examples key their noise, whatever rows and devices they are on.
    num_local = batch["image"].shape[0]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * num_local
    example_ids = batch_example_ids(batch, first_id=offset)
    # A class-weighted loss is Σ w·ℓ / Σ w over the global batch, not a mean of per-part ratios:
    # each part (device, micro-batch) divides its Σ w·ℓ by its share of the global Σ w, so that
    # the parts' mean below is the global batch's loss. Σ w depends on the labels only.
    normalizers = jax.tree.map(lambda total: total / accumulate_steps,
                               mean_over_devices(system.class_weight_sums(batch)))
    # Micro-batches are summed before anything decides: the combiner sees the accumulated g_e and
    # g_t, exactly as with one k times larger batch.
    enhancement_grads, task_grads, recognizer_terms, metrics = accumulate_gradients(
        lambda micro: gradients(state, *micro, normalizers), (batch, example_ids), accumulate_steps)

    # Under pmap, average before any decision: every device must gate on the same global cosine.
    enhancement_grads, task_grads, recognizer_terms, metrics = mean_over_devices(
        (enhancement_grads, task_grads, recognizer_terms, metrics))
    finite = _all_finite((enhancement_grads, task_grads, recognizer_terms, metrics))

    new_state = state
    if enhancement_grads is not None:
      extra = {} if task_grads is None else {"task_grads": task_grads}
      updates, opt_state = enhancer_tx.update(enhancement_grads, state.enhancer_opt_state,
                                              state.enhancer_params, **extra)
      new_state = new_state.replace(
          enhancer_params=optax.apply_updates(state.enhancer_params, updates),
          enhancer_opt_state=opt_state)
      metrics["enhancement_grad_norm"] = optax.tree.norm(enhancement_grads)
      metrics["enhancer_lr"] = _learning_rate(opt_state)
      if task_grads is not None:
        metrics.update(task_metrics(system, "task_grad_norm", task_grads, optax.tree.norm))
      # cosine, gate (and the EMA if gated on), keyed as the system keys its tasks' values
      metrics.update(find_combiner_metrics(opt_state, suffixed=system.multi_task))
    if phase.update_recognizer and recognizer_terms:
      recognizer_grads = jax.tree.map(lambda *g: sum(g) / len(g), *recognizer_terms)
      updates, opt_state = recognizer_tx.update(recognizer_grads, state.recognizer_opt_state,
                                                state.recognizer_params)
      new_state = new_state.replace(
          recognizer_params=optax.apply_updates(state.recognizer_params, updates),
          recognizer_opt_state=opt_state)
      metrics["recognizer_lr"] = _learning_rate(opt_state)

    # Skip a non-finite step: keep the old parameters and optimiser states.
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    streak = jnp.where(finite, 0, state.nonfinite_streak + 1)
    new_state = new_state.replace(
        step=state.step + 1, nonfinite_streak=streak,
        nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32))
    metrics["nonfinite"] = (~finite).astype(jnp.float32)
    metrics["nonfinite_streak"] = streak.astype(jnp.float32)
    return new_state, metrics

  return train_step
