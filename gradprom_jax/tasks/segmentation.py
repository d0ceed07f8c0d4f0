"""Segmentation: per-pixel classes (lesion masks) scored against the batch's ``mask``.

Its loss is cross-entropy plus ``dice_weight`` × soft Dice of the foreground; its metrics are Dice
and IoU from pixel counts summed over the whole split (the "global" or micro Dice, as if the split
were one large image), pixel accuracy and the per-image Dice; its sample-grid panel outlines the
predicted (red) and true (green) lesions on the enhanced image.

>>> KIND.name, KIND.target_key, [(option.name, option.default) for option in KIND.loss_options]
('segmentation', 'mask', [('dice_weight', 1.0)])
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradprom_jax.tasks.class_weights import weighted_mean
from gradprom_jax.tasks.kind import LossOption, TaskKind
from gradprom_jax.tasks.padding import valid_rows

PREDICTED_COLOR, TRUE_COLOR = "red", "lime"


# ---------------------------------------------------------------- the loss


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
  `soft_dice_loss`), so the mean of a batch's equal parts' losses is the batch's loss.

  Args:
    logits: (N, H, W, K) per-pixel logits.
    masks: (N, H, W) int class indices (0/1 for binary masks).
    dice_weight: weight of the Dice term (0 gives plain cross-entropy).
    class_weights: optional (K,) per-class weights of the cross-entropy
      (for one channel: weights of background and foreground pixels, (2,)),
      normalised as in `classification.classification_loss`.
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
  loss = weighted_mean(losses, masks, class_weights, normalizer)
  if dice_weight:
    loss = loss + dice_weight * soft_dice_loss(foreground_probs, foreground_masks)
  return loss


# ---------------------------------------------------------------- metrics: on device


def segmentation_counts(pred_masks: jax.Array, true_masks: jax.Array,
                        num_classes: int) -> dict[str, jax.Array]:
  """Per-example per-class pixel counts, enough for Dice, IoU and accuracy.

  Args:
    pred_masks: (N, H, W) int predicted classes.
    true_masks: (N, H, W) int true classes.
    num_classes: K, counting the background (2 for binary lesion masks, also
      when the model has a single sigmoid channel).

  Returns:
    intersection, predicted, true: (N, K) int32 pixel counts of
      pred == true == k, pred == k, true == k; correct and pixels: (N,) int32
      counts of correctly classified and of all pixels.

  >>> pred = jnp.array([[[0, 1], [1, 1]]]); true = jnp.array([[[0, 1], [0, 1]]])
  >>> {k: v.tolist() for k, v in segmentation_counts(pred, true, 2).items()}
  {'intersection': [[1, 2]], 'predicted': [[1, 3]], 'true': [[2, 2]], 'correct': [3], 'pixels': [4]}
  """
  pred_one_hot = jax.nn.one_hot(pred_masks, num_classes, dtype=jnp.int32)
  true_one_hot = jax.nn.one_hot(true_masks, num_classes, dtype=jnp.int32)
  spatial = (1, 2)
  return {
      "intersection": jnp.sum(pred_one_hot * true_one_hot, axis=spatial),
      "predicted": jnp.sum(pred_one_hot, axis=spatial),
      "true": jnp.sum(true_one_hot, axis=spatial),
      "correct": jnp.sum(pred_masks == true_masks, axis=spatial, dtype=jnp.int32),
      "pixels": jnp.full(pred_masks.shape[:1],
                         pred_masks.shape[1] * pred_masks.shape[2], jnp.int32),
  }


# ---------------------------------------------------------------- metrics: on host


@dataclasses.dataclass(eq=False)  # Array fields: compare `compute()` results instead.
class SegmentationMetrics:
  """Dice, IoU and pixel accuracy over a whole evaluation set.

  `dice` and `iou` are computed from pixel counts summed over all images
  (the "global" or micro Dice, as if the set were one large image), then
  averaged over the foreground classes 1..K-1; `dice_per_image` is the mean
  over images of each image's foreground Dice (an image where a class is
  absent from both prediction and truth scores 1 for it). With K > 2,
  per-class values are added as `dice_class{k}` and `iou_class{k}`.

  `update` adds in place and returns self; `merge` returns a new accumulator.

  >>> m = SegmentationMetrics(num_classes=2)
  >>> pred = jnp.array([[[0, 1], [1, 1]]]); true = jnp.array([[[0, 1], [0, 1]]])
  >>> m = m.update(jax.device_get(segmentation_counts(pred, true, 2)))
  >>> {k: round(v, 3) for k, v in m.compute().items()}
  {'dice': 0.8, 'iou': 0.667, 'pixel_accuracy': 0.75, 'dice_per_image': 0.8}
  """
  num_classes: int
  intersection: np.ndarray | None = None
  predicted: np.ndarray | None = None
  true: np.ndarray | None = None
  correct: int = 0
  pixels: int = 0
  dice_per_image_sum: float = 0.0
  images: int = 0

  def __post_init__(self):
    if self.num_classes < 2:
      raise ValueError(f"num_classes counts the background and must be >= 2, "
                       f"got {self.num_classes}")
    for name in ("intersection", "predicted", "true"):
      if getattr(self, name) is None:
        setattr(self, name, np.zeros(self.num_classes, np.int64))

  def update(self, counts: dict[str, np.ndarray],
             valid: np.ndarray | None = None) -> SegmentationMetrics:
    """Adds the output of `segmentation_counts`, skipping examples not `valid`."""
    counts = {k: np.asarray(v, np.int64) for k, v in counts.items()}
    if counts["intersection"].shape[1:] != (self.num_classes,):
      raise ValueError(f"counts have {counts['intersection'].shape[1:]} classes, "
                       f"expected ({self.num_classes},)")
    keep = valid_rows(valid, len(counts["pixels"]))
    counts = {k: v[keep] for k, v in counts.items()}
    self.intersection = self.intersection + counts["intersection"].sum(0)
    self.predicted = self.predicted + counts["predicted"].sum(0)
    self.true = self.true + counts["true"].sum(0)
    self.correct += int(counts["correct"].sum())
    self.pixels += int(counts["pixels"].sum())
    per_image = _dice(counts["intersection"], counts["predicted"],
                      counts["true"], empty=1.0)[:, 1:]
    self.dice_per_image_sum += float(per_image.mean(1).sum())
    self.images += int(keep.sum())
    return self

  def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
    """Accumulator of both sets of examples."""
    return SegmentationMetrics(
        self.num_classes, self.intersection + other.intersection,
        self.predicted + other.predicted, self.true + other.true,
        self.correct + other.correct, self.pixels + other.pixels,
        self.dice_per_image_sum + other.dice_per_image_sum,
        self.images + other.images)

  def compute(self) -> dict[str, float]:
    """Foreground `dice`, `iou`, `pixel_accuracy` and `dice_per_image`."""
    dice = _dice(self.intersection, self.predicted, self.true, empty=np.nan)
    union = self.predicted + self.true - self.intersection
    with np.errstate(invalid="ignore", divide="ignore"):
      iou = np.where(union > 0, self.intersection / union, np.nan)
    result = {
        "dice": float(np.nanmean(dice[1:])) if np.any(np.isfinite(dice[1:])) else np.nan,
        "iou": float(np.nanmean(iou[1:])) if np.any(np.isfinite(iou[1:])) else np.nan,
        "pixel_accuracy": self.correct / self.pixels if self.pixels else np.nan,
        "dice_per_image": (self.dice_per_image_sum / self.images
                           if self.images else np.nan),
    }
    if self.num_classes > 2:
      for k in range(1, self.num_classes):
        result[f"dice_class{k}"] = float(dice[k])
        result[f"iou_class{k}"] = float(iou[k])
    return result


def _dice(intersection: np.ndarray, predicted: np.ndarray, true: np.ndarray,
          empty: float) -> np.ndarray:
  """2|P and T| / (|P| + |T|) elementwise, `empty` where both are empty."""
  denominator = predicted + true
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denominator > 0, 2 * intersection / denominator, empty)


# ---------------------------------------------------------------- the kind


class Segmentation(TaskKind):
  """Lesion masks: per-pixel logits (N, H, W, K) against ``mask`` (N, H, W)."""
  name = "segmentation"
  target_key = "mask"
  targets_description = "lesion masks"
  loss_options = (LossOption("dice_weight", 1.0, "Segmentation loss: cross-entropy + dice_weight "
                                                 "· soft Dice of the foreground (0: plain "
                                                 "cross-entropy)."),)
  logits_per = "pixel"
  primary_metric = "dice"
  front_metrics = ("dice",)

  def loss(self, logits, targets, *, class_weights=None, normalizer=None, dice_weight=1.0):
    return segmentation_loss(logits, targets, dice_weight=dice_weight,
                             class_weights=class_weights, normalizer=normalizer)

  def eval_outputs(self, probabilities, targets):
    return segmentation_counts(jnp.argmax(probabilities, axis=-1), targets,
                               probabilities.shape[-1])

  def new_metrics(self, num_classes):
    return SegmentationMetrics(num_classes)

  def update_metrics(self, metrics, outputs, valid):
    metrics.update(outputs, valid=valid)

  def class_names(self, dataset: Any) -> tuple[str, ...]:
    return tuple(dataset.mask_class_names or ("background", "lesion"))

  def example_shape(self, height, width):
    return (height, width)

  def draws_extra_panel(self) -> bool:
    return True

  def prediction_columns(self, probabilities, class_names):
    return {}

  def prediction_image(self, probabilities):
    # The class index per pixel, scaled to 0..1 (0..255 in the PNG).
    classes = probabilities.argmax(-1).astype(np.float32) / max(probabilities.shape[-1] - 1, 1)
    return "masks", classes[..., None]

  def draw(self, axes, prediction, target, class_names):
    for mask, color in ((target, TRUE_COLOR), (prediction, PREDICTED_COLOR)):
      if mask is not None and np.any(mask > 0):
        axes[3].contour(np.asarray(mask) > 0, levels=[0.5], colors=color, linewidths=1.0)


KIND = Segmentation()
