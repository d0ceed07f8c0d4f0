"""Losses of the enhancer (L_IP) and of the recogniser (L_VR).

Each returns a scalar float32 mean over the batch, jit-able and differentiable.
Every term is a mean of per-example values (soft Dice is per image, not over the batch), so the
mean of a batch's equal parts' losses is the batch's loss; a class-weighted loss is the exception
(Σ w·ℓ / Σ w is a ratio of batch sums) and takes its parts' shares of Σ w as ``normalizer``.
Images are float32 NHWC in [0, 1]; labels int32 (N,); masks int32 (N, H, W).
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np
import optax


def l1_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error.

  >>> l1_loss(jnp.zeros((1, 2, 2, 1)), jnp.full((1, 2, 2, 1), 0.5))
  Array(0.5, dtype=float32)
  """
  return jnp.mean(jnp.abs(pred - target))


def mse_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error.

  >>> mse_loss(jnp.zeros((1, 2, 2, 1)), jnp.full((1, 2, 2, 1), 0.5))
  Array(0.25, dtype=float32)
  """
  return jnp.mean(jnp.square(pred - target))


def charbonnier_loss(pred: jax.Array, target: jax.Array,
                     eps: float = 1e-3) -> jax.Array:
  """Charbonnier loss: mean of sqrt(diff^2 + eps^2), a differentiable L1.

  Smooth at zero (L1's gradient jumps there) and L1-like for |diff| >> eps,
  as used by LapSRN and many restoration models.

  >>> charbonnier_loss(jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1)), eps=0.1)
  Array(0.1, dtype=float32)
  """
  return jnp.mean(jnp.sqrt(jnp.square(pred - target) + eps**2))


def ssim_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """1 - SSIM (dm-pix, 11x11 Gaussian window, sigma 1.5, max value 1).

  Images need at least 11x11 pixels (SSIM uses a VALID window).

  >>> x = jnp.linspace(0, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
  >>> round(float(ssim_loss(x, x)), 6)
  0.0
  """
  return 1.0 - jnp.mean(dm_pix.ssim(pred, target, max_val=1.0))


_PIXEL_LOSSES = {"l1": l1_loss, "mse": mse_loss, "charbonnier": charbonnier_loss}


def enhancement_loss(pred: jax.Array, target: jax.Array, kind: str = "l1",
                     ssim_weight: float = 0.0) -> jax.Array:
  """Pixel loss `kind` (l1, mse or charbonnier) plus `ssim_weight` * (1 - SSIM).

  >>> pred, target = jnp.zeros((1, 16, 16, 1)), jnp.full((1, 16, 16, 1), 0.5)
  >>> enhancement_loss(pred, target, kind="mse")
  Array(0.25, dtype=float32)
  >>> enhancement_loss(pred, target, kind="l2")
  Traceback (most recent call last):
  ...
  ValueError: unknown enhancement loss kind 'l2'; valid: l1, mse, charbonnier
  """
  if kind not in _PIXEL_LOSSES:
    raise ValueError(f"unknown enhancement loss kind {kind!r}; "
                     f"valid: {', '.join(_PIXEL_LOSSES)}")
  loss = _PIXEL_LOSSES[kind](pred, target)
  if ssim_weight:  # A Python float: skip the SSIM computation when unused.
    loss = loss + ssim_weight * ssim_loss(pred, target)
  return loss


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


def _weighted_mean(values: jax.Array, labels: jax.Array, class_weights: jax.Array | None,
                   normalizer: jax.Array | None = None) -> jax.Array:
  """Mean of `values`, weighted by the weight of each element's true class.

  Normalised by the summed weights (as PyTorch's weighted cross-entropy), so the loss scale does
  not change with the weights' overall magnitude; ``normalizer`` replaces this batch's own Σ w.
  """
  if class_weights is None:
    return jnp.mean(values)
  if normalizer is None:
    normalizer = class_weight_sum(labels, class_weights)
  return jnp.sum(jnp.asarray(class_weights, jnp.float32)[labels] * values) / normalizer


def classification_loss(logits: jax.Array, labels: jax.Array,
                        class_weights: jax.Array | None = None,
                        label_smoothing: float = 0.0,
                        normalizer: jax.Array | None = None) -> jax.Array:
  """Softmax cross-entropy of logits (N, K) against int labels (N,).

  Args:
    logits: unnormalised scores (N, K).
    labels: class indices (N,).
    class_weights: optional (K,) weights; the loss is the weighted mean
      sum_i w[y_i] ce_i / sum_i w[y_i] (weights follow the true class).
    label_smoothing: alpha of `optax.smooth_labels`: targets become
      (1 - alpha) one_hot + alpha / K.
    normalizer: the Σ w that divides Σ w·ℓ; None: this batch's own. A batch that is one part of
      a larger one (a device's shard, a micro-batch) passes its share of the whole batch's Σ w
      (that Σ w / number of parts), so that the mean of the parts' losses is the whole batch's.

  >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
  >>> round(float(classification_loss(logits, jnp.array([0, 0]))), 4)
  1.1269
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  losses = optax.softmax_cross_entropy(logits, targets)
  return _weighted_mean(losses, labels, class_weights, normalizer)


def soft_dice_loss(probabilities: jax.Array, masks: jax.Array,
                   smooth: float = 1.0) -> jax.Array:
  """1 - soft Dice, averaged over images and over the channels given.

  Args:
    probabilities: (N, H, W, C) predicted probabilities of C classes.
    masks: (N, H, W, C) one-hot (or binary) float targets of the same classes.
    smooth: added to numerator and denominator, so an image where a class is
      absent from both prediction and target scores Dice 1, not 0/0.

  >>> m = jnp.ones((1, 4, 4, 1))
  >>> soft_dice_loss(m, m)
  Array(0., dtype=float32)
  """
  intersection = jnp.sum(probabilities * masks, axis=(1, 2))
  total = jnp.sum(probabilities, axis=(1, 2)) + jnp.sum(masks, axis=(1, 2))
  dice = (2 * intersection + smooth) / (total + smooth)
  return 1.0 - jnp.mean(dice)


def segmentation_loss(logits: jax.Array, masks: jax.Array,
                      dice_weight: float = 1.0,
                      class_weights: jax.Array | None = None,
                      normalizer: jax.Array | None = None) -> jax.Array:
  """Cross-entropy plus `dice_weight` * soft Dice loss of the foreground.

  With K >= 2 channels: softmax cross-entropy over the K classes and soft
  Dice over the foreground classes 1..K-1 (class 0 is background). With one
  channel: sigmoid binary cross-entropy against mask == 1 and soft Dice of
  that channel. Soft Dice is computed per image and averaged (see
  `soft_dice_loss`).

  Args:
    logits: (N, H, W, K) per-pixel logits.
    masks: (N, H, W) int class indices (0/1 for binary masks).
    dice_weight: weight of the Dice term (0 gives plain cross-entropy).
    class_weights: optional (K,) per-class weights of the cross-entropy
      (for one channel: weights of background and foreground pixels, (2,)),
      normalised as in `classification_loss`.
    normalizer: the Σ w (over pixels) that divides Σ w·ℓ of the
      cross-entropy; None: this batch's own. A batch that is one part of
      a larger one (a device's shard, a micro-batch) passes its share of the whole batch's Σ w
      (that Σ w / number of parts), so that the mean of the parts' losses is the whole batch's.

  >>> masks = jnp.zeros((1, 8, 8), jnp.int32).at[:, 2:6, 2:6].set(1)
  >>> confident = 20.0 * jax.nn.one_hot(masks, 2) - 10.0
  >>> round(float(segmentation_loss(confident, masks)), 3)
  0.0
  """
  if logits.shape[-1] == 1:
    logits = logits[..., 0]
    targets = (masks == 1).astype(logits.dtype)
    losses = optax.sigmoid_binary_cross_entropy(logits, targets)
    foreground_probs = jax.nn.sigmoid(logits)[..., None]
    foreground_masks = targets[..., None]
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, masks)
    foreground_probs = jax.nn.softmax(logits)[..., 1:]
    foreground_masks = jax.nn.one_hot(masks, logits.shape[-1],
                                      dtype=logits.dtype)[..., 1:]
  loss = _weighted_mean(losses, masks, class_weights, normalizer)
  if dice_weight:
    loss = loss + dice_weight * soft_dice_loss(foreground_probs, foreground_masks)
  return loss
