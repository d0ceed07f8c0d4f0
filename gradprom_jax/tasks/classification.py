"""Classification: one class per image (a diagnosis) scored against the batch's ``label``.

Its loss is softmax cross-entropy with optional ``label_smoothing``; its metrics are accuracy,
balanced accuracy, macro-F1 and ROC AUC from every example's class probabilities at once; its
sample-grid titles name the predicted class (green when right, red when wrong) and the true one.

>>> import numpy as np
>>> m = ClassificationMetrics(num_classes=2)
>>> m = m.update(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), np.array([0, 1, 1]))
>>> {k: round(v, 3) for k, v in m.compute().items()}
{'accuracy': 0.667, 'balanced_accuracy': 0.75, 'macro_f1': 0.667, 'auc': 1.0}
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import numpy as np
import optax

from gradprom_jax.tasks.class_weights import weighted_mean
from gradprom_jax.tasks.kind import LossOption, TaskKind
from gradprom_jax.tasks.padding import valid_rows


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

  >>> import jax.numpy as jnp
  >>> logits = jnp.array([[2.0, 0.0], [0.0, 2.0]])
  >>> round(float(classification_loss(logits, jnp.array([0, 0]))), 4)
  1.1269
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  losses = optax.softmax_cross_entropy(logits, targets)
  return weighted_mean(losses, labels, class_weights, normalizer)


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
    keep = valid_rows(valid, len(labels))
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


def warn_if_single_class_predicted(classification: ClassificationMetrics) -> bool:
  """Warns (and returns True) when every example was predicted as the same class.

  A recogniser that collapsed onto the majority class scores a plausible accuracy on imbalanced
  data while its balanced accuracy is chance; this says so instead of leaving it to the numbers.

  >>> metrics = ClassificationMetrics(num_classes=2)
  >>> _ = metrics.update(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
  >>> warn_if_single_class_predicted(metrics)
  True
  """
  if not classification.probabilities:
    return False
  predictions = np.concatenate(classification.probabilities).argmax(-1)
  if len(predictions) < 2 or np.any(predictions != predictions[0]):
    return False
  logging.warning("The recogniser predicts class %d for all %d examples of this split (balanced "
                  "accuracy is chance); for imbalanced classes try --config.task.class_weights=balanced.",
                  predictions[0], len(predictions))
  return True


def _class_name(index: int, class_names: tuple[str, ...] | None) -> str:
  return class_names[index] if class_names is not None else str(index)


class Classification(TaskKind):
  """A diagnosis per image: logits (N, K) against ``label`` (N,)."""
  name = "classification"
  target_key = "label"
  targets_description = "class labels"
  loss_options = (LossOption("label_smoothing", 0.0, "Classification loss: label smoothing of the "
                                                     "cross-entropy's targets (0: none)."),)
  logits_per = "image"
  balanced_class_weights = True
  primary_metric = "accuracy"
  front_metrics = ("auc", "balanced_accuracy")

  def loss(self, logits, targets, *, class_weights=None, normalizer=None, label_smoothing=0.0):
    return classification_loss(logits, targets, class_weights=class_weights,
                               label_smoothing=label_smoothing, normalizer=normalizer)

  def eval_outputs(self, probabilities, targets):
    return {"probabilities": probabilities, "labels": targets}

  def new_metrics(self, num_classes):
    return ClassificationMetrics(num_classes)

  def update_metrics(self, metrics, outputs, valid):
    metrics.update(outputs["probabilities"], outputs["labels"], valid=valid)

  def check_predictions(self, metrics):
    warn_if_single_class_predicted(metrics)

  def class_names(self, dataset: Any) -> tuple[str, ...]:
    return tuple(dataset.class_names or ())

  def draw(self, axes, prediction, target, class_names):
    if prediction is None:
      return
    color = "black"
    if target is not None:
      axes[2].set_title(f"high quality: true {_class_name(int(target), class_names)}",
                        fontsize=7, pad=2)
      color = "green" if int(prediction) == int(target) else "red"
    axes[1].set_title(f"enhanced: pred {_class_name(int(prediction), class_names)}",
                      fontsize=7, pad=2, color=color)


KIND = Classification()
