"""One training step, as a pure function of (state, batch): the paper's algorithm box.

    x_lq = degrade(x_hq)                          on device, seeded per example
    y, pullback = vjp(enhancer_θ, x_lq)           ONE enhancer forward pass
    ∂L_enh/∂y, ∂L_k/∂y, ∇φ_k L_k                  losses on the enhanced image y, per task k
    g_e, g_t,k = pullback(∂L_enh/∂y), pullback(∂L_k/∂y)     (K + 1 pull-backs, one forward)
    θ ← θ + enhancer_tx(g_e, task_grads=g_t)      GradProm or a baseline combiner, then AdamW
    φ_k ← φ_k + recognizer_tx(∇φ_k L_k)           each recogniser with its own optimiser

With one task (K = 1) g_t is one tree; with several it is a dict by task name, and the combiner
gates each g_t,k against g_e on its own. Joint training pulls back one summed cotangent
∂L_enh/∂y + Σ_k λ_k ∂L_k/∂y: exactly g_e + Σ_k λ_k g_t,k, at one pull-back's cost.

With ``accumulate_steps = k`` the gradients (g_e, g_t and the recognisers') are averaged over k
micro-batches before the updates, so GradProm's cosine is taken on the accumulated gradients.
Every mode (1 device, ``pmap`` or a mesh over several, k micro-batches) computes the gradients of
the one global batch: a class-weighted loss's Σ w is the global batch's (see ``train_step``).

The data-parallel wrapper is applied outside (:mod:`gradprom_jax.training.parallel`): under ``jax.pmap`` the
step is given ``axis_name`` and averages every gradient across devices *before* the combiner, so all
devices take the same gating decision; under ``jax.jit`` on a mesh gradients are already global.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

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
  loss's gradient with respect to ``images``, in the system's per-task layout (one value for a
  single task, dicts by task name for several). Without ``image_gradients`` the third is None.
  ``normalizers`` (that layout; None: each loss's own) divide the class-weighted losses' Σ w·ℓ.
  """
  outputs = []
  if normalizers is None:
    normalizers = system.join([None] * len(system.heads))
  for head, phi, normalizer in zip(system.heads, system.split(recognizer_params),
                                   system.split(normalizers)):
    def loss(phi, y, head=head, normalizer=normalizer):
      return head.loss(head.recognize(phi, y, train=True), batch, normalizer)
    if image_gradients:
      value, (phi_grads, image_grads) = jax.value_and_grad(loss, argnums=(0, 1))(phi, images)
    else:
      (value, phi_grads), image_grads = jax.value_and_grad(loss)(phi, images), None
    outputs.append((value, phi_grads, image_grads))
  values, phi_grads, image_grads = zip(*outputs)
  return (system.join(values), system.join(phi_grads),
          system.join(image_grads) if image_gradients else None)


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
    per-task values (task loss, g_t, ∇φ) in the system's layout: dicts by task name for several.
  """
  enhanced, pullback = jax.vjp(lambda p: system.enhance(p, low_quality, train=True), enhancer_params)
  enhancement_loss, d_enhancement = jax.value_and_grad(system.enhancement_loss)(
      enhanced, batch["image"])
  task_loss, recognizer_grads, d_task = task_losses_and_gradients(
      system, recognizer_params, enhanced, batch, normalizers=normalizers)
  enhancement_grads = pullback(d_enhancement)[0]
  task_grads = system.join([pullback(d)[0] for d in system.split(d_task)])
  return {
      "enhancement_loss": enhancement_loss, "task_loss": task_loss, "enhanced": enhanced,
      "enhancement_grads": enhancement_grads, "task_grads": task_grads,
      "recognizer_grads": recognizer_grads,
  }


def summed_cotangent(system: TaskDrivenSystem, d_enhancement: jax.Array, d_task: Any,
                     task_weight: float | Mapping[str, float]) -> jax.Array:
  """∂L_enh/∂y + Σ_k λ_k ∂L_k/∂y: pulled back once, it gives g_e + Σ_k λ_k g_t,k (linearity)."""
  cotangent = d_enhancement
  for head, d in zip(system.heads, system.split(d_task)):
    weight = task_weight[head.name] if isinstance(task_weight, Mapping) else task_weight
    cotangent = cotangent + weight * d
  return cotangent


def task_metrics(system: TaskDrivenSystem, key: str, per_task: Any, value_of=lambda x: x
                 ) -> dict[str, jax.Array]:
  """``{key: value}`` for a single task; ``{key/<task>: value}`` for each of several."""
  return {system.metric_key(key, head): value_of(v)
          for head, v in zip(system.heads, system.split(per_task))}


def _all_finite(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def _learning_rate(opt_state: Any) -> jax.Array:
  """The current learning rate of the (single) ``inject_hyperparams`` optimiser in ``opt_state``."""
  is_injected = lambda x: isinstance(x, optax.InjectStatefulHyperparamsState)
  injected = [s for s in jax.tree.leaves(opt_state, is_leaf=is_injected) if is_injected(s)]
  return jnp.asarray(injected[0].hyperparams["learning_rate"], jnp.float32)


def make_train_step(system: TaskDrivenSystem, phase: Phase, *,
                    enhancer_tx: optax.GradientTransformationExtraArgs,
                    recognizer_tx: optax.GradientTransformation,
                    task_weight: float | Mapping[str, float],
                    axis_name: str | None = None, accumulate_steps: int = 1
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """The train step of ``phase``: ``(state, batch) -> (state, metrics)``.

  A step whose losses or gradients are not finite changes neither parameters nor optimiser states;
  it only increments ``step`` and the non-finite counters (the loop stops after too many in a row).

  Args:
    system: the models, degradation and losses.
    phase: what this step updates, and how (see :class:`~gradprom_jax.training.phases.Phase`).
    enhancer_tx, recognizer_tx: the two optimisers (the combiner is inside ``enhancer_tx``).
    task_weight: λ (for several tasks, ``{task: λ_k}``), used where the step itself sums the task
      cotangents (``"summed"`` phases); ``"separate"`` phases leave λ to the combiner.
    axis_name: the ``pmap`` axis to average gradients over, or None under ``jit``.
    accumulate_steps: k; the (per-device) batch is split into k micro-batches whose gradients
      (g_e, g_t and the recogniser's) are averaged in a ``lax.scan`` before the combiner and the
      optimisers run once: the update of one k times larger batch, with 1/k of the activations.
  """
  def mean_over_devices(tree):
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)

  def gradients(state: TrainState, batch: Batch, example_ids: jax.Array, normalizers: Any):
    """g_e, g_t, the recognisers' gradient terms and the losses on one (micro-)batch."""
    high_quality = batch["image"]
    key = jax.random.fold_in(state.key, state.step)
    metrics, recognizer_terms = {}, []
    enhancement_grads = task_grads = None

    if phase.needs_enhancer:
      low_quality = system.degrade(key, high_quality, example_ids)
      if phase.enhancer_gradient == "separate":
        out = shared_forward_gradients(system, state.enhancer_params, state.recognizer_params,
                                       low_quality, batch, normalizers)
        enhancement_grads, task_grads = out["enhancement_grads"], out["task_grads"]
        recognizer_grads_on_enhanced = out["recognizer_grads"]
        metrics.update(enhancement_loss=out["enhancement_loss"],
                       **task_metrics(system, "task_loss", out["task_loss"]))
      elif phase.enhancer_gradient in ("summed", "enhancement"):
        enhanced, pullback = jax.vjp(
            lambda p: system.enhance(p, low_quality, train=True), state.enhancer_params)
        enhancement_loss, d_enhancement = jax.value_and_grad(system.enhancement_loss)(
            enhanced, high_quality)
        task_loss, recognizer_grads_on_enhanced, d_task = task_losses_and_gradients(
            system, state.recognizer_params, enhanced, batch, normalizers=normalizers)
        # By linearity of the pull-back, one backward pass gives g_e + Σ_k λ_k g_t,k.
        cotangent = (summed_cotangent(system, d_enhancement, d_task, task_weight)
                     if phase.enhancer_gradient == "summed" else d_enhancement)
        enhancement_grads = pullback(cotangent)[0]
        metrics.update(enhancement_loss=enhancement_loss,
                       **task_metrics(system, "task_loss", task_loss))
      else:   # frozen enhancer: the recognisers learn on its (evaluation-mode) outputs
        enhanced = system.enhance(state.enhancer_params, low_quality, train=False)
        task_loss, recognizer_grads_on_enhanced, _ = task_losses_and_gradients(
            system, state.recognizer_params, enhanced, batch, image_gradients=False,
            normalizers=normalizers)
        metrics.update(task_metrics(system, "task_loss", task_loss))
      if phase.recognizer_input in ("enhanced", "both"):
        recognizer_terms.append(recognizer_grads_on_enhanced)
    if phase.recognizer_input in ("high_quality", "both") and phase.update_recognizer:
      task_loss, grads, _ = task_losses_and_gradients(
          system, state.recognizer_params, high_quality, batch, image_gradients=False,
          normalizers=normalizers)
      metrics.update(task_metrics(system, "task_loss_high_quality", task_loss))
      recognizer_terms.append(grads)
    return enhancement_grads, task_grads, recognizer_terms, metrics

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
      metrics.update(find_combiner_metrics(opt_state))   # cosine, gate (and the EMA if gated on)
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
