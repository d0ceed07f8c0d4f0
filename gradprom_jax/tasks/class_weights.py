"""Per-class weights of a task loss, shared by the kinds: balanced weights from class counts, and
the weighted mean whose normaliser (Σ w) a split batch computes before differentiating.

A class-weighted loss is Σ w·ℓ / Σ w, a ratio of batch sums rather than a mean of per-example
values, so a batch split into equal parts (devices, micro-batches) passes each part its share of
the whole batch's Σ w as ``normalizer``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def balanced_class_weights(class_counts) -> tuple[float, ...]:
  """Per-class weights inversely proportional to the class counts, normalised to mean 1.

  Each class then contributes equally to a weighted loss, whatever its frequency.

  >>> balanced_class_weights([72, 28])
  (0.56, 1.44)
  """
  counts = np.asarray(class_counts, np.float64)
  if counts.ndim != 1 or not len(counts) or np.any(counts <= 0):
    empty = [int(k) for k in np.flatnonzero(counts <= 0)] if counts.ndim == 1 else []
    raise ValueError(f"balanced class weights need examples of every class; counts {tuple(class_counts)}"
                     + (f" have none of class {empty}" if empty else ""))
  inverse = 1.0 / counts
  return tuple(round(float(w), 6) for w in inverse / inverse.mean())


def class_weight_sum(labels: jax.Array, class_weights: jax.Array | None) -> jax.Array | None:
  """Σ_i w[y_i] over every element of ``labels`` (None without class weights).

  A weighted loss's default normaliser; it depends on the labels only, so a caller that splits a
  batch (over devices or micro-batches) can compute the whole batch's sum before differentiating.

  >>> class_weight_sum(jnp.array([0, 1, 1]), jnp.array([0.5, 2.0]))
  Array(4.5, dtype=float32)
  """
  if class_weights is None:
    return None
  return jnp.sum(jnp.asarray(class_weights, jnp.float32)[labels])


def weighted_mean(values: jax.Array, labels: jax.Array, class_weights: jax.Array | None,
                  normalizer: jax.Array | None = None) -> jax.Array:
  """Mean of ``values``, weighted by the weight of each element's true class.

  Normalised by the summed weights (as PyTorch's weighted cross-entropy), so the loss scale does
  not change with the weights' overall magnitude; ``normalizer`` replaces this batch's own Σ w.

  >>> weighted_mean(jnp.array([1.0, 3.0]), jnp.array([0, 1]), jnp.array([1.0, 3.0]))
  Array(2.5, dtype=float32)
  """
  if class_weights is None:
    return jnp.mean(values)
  if normalizer is None:
    normalizer = class_weight_sum(labels, class_weights)
  return jnp.sum(jnp.asarray(class_weights, jnp.float32)[labels] * values) / normalizer
