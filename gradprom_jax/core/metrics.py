"""Evaluation metrics: per-example values on device, whole-set accumulation on host.

The split follows what each metric needs. PSNR/SSIM and segmentation counts
are per-example and cheap to compute where the images are (jit-able functions
below). Dataset-level numbers must not be averages of per-batch numbers: Dice
and IoU come from counts summed over the whole set, and ROC AUC from all
scores at once. The host accumulators below therefore keep sums (or, for AUC,
all probabilities), merge across shards, and ignore padded examples through a
`valid` mask. On several hosts, gather the per-example device arrays first
(`jax.experimental.multihost_utils.process_allgather`) and update one
accumulator, or merge one accumulator per host.

clu.metrics is not used: its `Collection`s average on device per batch, while
AUC needs every score and the callers here already work on host arrays.

>>> import numpy as np
>>> m = ClassificationMetrics(num_classes=2)
>>> m = m.update(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]))
>>> {k: round(v, 3) for k, v in m.compute().items()}
{'accuracy': 0.667, 'balanced_accuracy': 0.75, 'macro_f1': 0.667, 'auc': 1.0}
"""

from __future__ import annotations

import dataclasses

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------- on device


def psnr(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example PSNR (dB) of [0, 1] images (N, H, W, C) -> (N,).

  Identical images give +inf.

  >>> psnr(jnp.zeros((2, 4, 4, 1)), jnp.full((2, 4, 4, 1), 0.1))
  Array([20., 20.], dtype=float32)
  """
  return dm_pix.psnr(pred, target)


def ssim(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example SSIM of [0, 1] images (N, H, W, C) -> (N,).

  dm-pix defaults: 11x11 Gaussian window, sigma 1.5, VALID borders, mean
  over pixels and channels (equal to scikit-image's `structural_similarity`
  with `gaussian_weights=True, use_sample_covariance=False, data_range=1`).

  >>> x = jnp.linspace(0, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
  >>> ssim(x, x).round(4)
  Array([1., 1.], dtype=float32)
  """
  return dm_pix.ssim(pred, target, max_val=1.0)


def segmentation_counts(pred_masks: jax.Array, true_masks: jax.Array,
                        num_classes: int) -> dict[str, jax.Array]:
  """Per-example per-class pixel counts, enough for Dice, IoU and accuracy.

  Args:
    pred_masks: (N, H, W) int predicted classes (see `logits_to_masks`).
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


# ---------------------------------------------------------------- on host


def _valid_rows(valid: np.ndarray | None, n: int) -> np.ndarray:
  """Boolean (n,) mask of the examples to count (all when `valid` is None)."""
  if valid is None:
    return np.ones(n, bool)
  valid = np.asarray(valid, bool)
  if valid.shape != (n,):
    raise ValueError(f"valid must have shape ({n},), got {valid.shape}")
  return valid


@dataclasses.dataclass
class EnhancementMetrics:
  """Mean PSNR and SSIM over images (the convention of the SR literature).

  `update` adds in place and returns self; `merge` returns a new accumulator.

  >>> m = EnhancementMetrics().update(np.array([30.0, 40.0, 99.0]),
  ...                                 np.array([0.75, 0.25, 0.0]),
  ...                                 valid=np.array([True, True, False]))
  >>> m.compute()
  {'psnr': 35.0, 'ssim': 0.5}
  """
  psnr_sum: float = 0.0
  ssim_sum: float = 0.0
  count: int = 0

  def update(self, psnr_values: np.ndarray, ssim_values: np.ndarray,
             valid: np.ndarray | None = None) -> EnhancementMetrics:
    """Adds per-example PSNR and SSIM (N,), skipping examples not `valid`."""
    psnr_values = np.asarray(psnr_values, np.float64)
    keep = _valid_rows(valid, len(psnr_values))
    self.psnr_sum += float(psnr_values[keep].sum())
    self.ssim_sum += float(np.asarray(ssim_values, np.float64)[keep].sum())
    self.count += int(keep.sum())
    return self

  def merge(self, other: EnhancementMetrics) -> EnhancementMetrics:
    """Accumulator of both sets of examples."""
    return EnhancementMetrics(self.psnr_sum + other.psnr_sum,
                              self.ssim_sum + other.ssim_sum,
                              self.count + other.count)

  def compute(self) -> dict[str, float]:
    """Mean `psnr` (dB) and `ssim` over all valid examples (nan if none)."""
    count = self.count or np.nan
    return {"psnr": self.psnr_sum / count, "ssim": self.ssim_sum / count}


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
    keep = _valid_rows(valid, len(counts["pixels"]))
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


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks of `values`, ties sharing the mean of their ranks."""
  _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
  last_rank = np.cumsum(counts)
  return (last_rank - (counts - 1) / 2.0)[inverse]


def binary_auc(scores: np.ndarray, positives: np.ndarray) -> float:
  """ROC AUC from the Mann-Whitney U statistic; ties count one half.

  nan when only one class is present (the AUC is undefined).

  >>> binary_auc(np.array([0.1, 0.4, 0.4, 0.8]), np.array([0, 0, 1, 1]))
  0.875
  """
  positives = np.asarray(positives, bool)
  num_pos, num_neg = positives.sum(), (~positives).sum()
  if num_pos == 0 or num_neg == 0:
    return np.nan
  rank_sum = _average_ranks(np.asarray(scores, np.float64))[positives].sum()
  return float((rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg))


@dataclasses.dataclass(eq=False)  # Array fields: compare `compute()` results instead.
class ClassificationMetrics:
  """Accuracy, balanced accuracy, macro-F1 and ROC AUC over a whole set.

  Keeps every example's class probabilities, so AUC is computed once from all
  scores (an average of per-batch AUCs would be biased). Definitions follow
  scikit-learn: balanced accuracy is the mean recall over the classes present
  in the labels; macro-F1 averages F1 over the classes present in the labels
  or the predictions; AUC is that of class 1 for two classes, else the macro
  one-vs-rest average over classes with both positives and negatives.

  `update` adds in place and returns self; `merge` returns a new accumulator.

  >>> m = ClassificationMetrics(num_classes=3)
  >>> _ = m.update(np.eye(3), np.array([0, 1, 1]))
  >>> round(m.compute()["accuracy"], 3)
  0.667
  """
  num_classes: int
  probabilities: list[np.ndarray] = dataclasses.field(default_factory=list)
  labels: list[np.ndarray] = dataclasses.field(default_factory=list)

  def update(self, probabilities: np.ndarray, labels: np.ndarray,
             valid: np.ndarray | None = None) -> ClassificationMetrics:
    """Adds class probabilities (N, K) (softmax of the logits) and labels (N,)."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    if probabilities.shape != (len(labels), self.num_classes):
      raise ValueError(f"probabilities must have shape ({len(labels)}, "
                       f"{self.num_classes}), got {probabilities.shape}")
    keep = _valid_rows(valid, len(labels))
    self.probabilities.append(probabilities[keep])
    self.labels.append(labels[keep])
    return self

  def merge(self, other: ClassificationMetrics) -> ClassificationMetrics:
    """Accumulator of both sets of examples."""
    return ClassificationMetrics(self.num_classes,
                                 self.probabilities + other.probabilities,
                                 self.labels + other.labels)

  def compute(self) -> dict[str, float]:
    """`accuracy`, `balanced_accuracy`, `macro_f1` and `auc` of all examples."""
    probabilities = np.concatenate(
        self.probabilities or [np.zeros((0, self.num_classes))])
    labels = np.concatenate(self.labels or [np.zeros(0, np.int64)])
    if not len(labels):
      return dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1", "auc"), np.nan)
    predictions = probabilities.argmax(1)
    confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positives = np.diag(confusion)
    true_counts, predicted_counts = confusion.sum(1), confusion.sum(0)
    in_labels = true_counts > 0
    in_either = in_labels | (predicted_counts > 0)
    f1 = 2 * true_positives / np.maximum(true_counts + predicted_counts, 1)
    if self.num_classes == 2:
      auc = binary_auc(probabilities[:, 1], labels == 1)
    else:
      aucs = [binary_auc(probabilities[:, k], labels == k)
              for k in range(self.num_classes)]
      auc = float(np.nanmean(aucs)) if np.any(np.isfinite(aucs)) else np.nan
    return {
        "accuracy": float(np.mean(predictions == labels)),
        "balanced_accuracy": float(np.mean(
            true_positives[in_labels] / true_counts[in_labels])),
        "macro_f1": float(np.mean(f1[in_either])),
        "auc": auc,
    }
