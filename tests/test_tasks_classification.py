"""Tests of gradprom_jax.tasks.classification: its loss against direct numpy formulas, its metrics
against scikit-learn when accumulated in batches, the collapsed-recogniser warning, and the kind's
interface."""
import logging

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from gradprom_jax.tasks import classification
from gradprom_jax.tasks.classification import (ClassificationMetrics, binary_auc,
                                               classification_loss, warn_if_single_class_predicted)

RNG = np.random.default_rng(0)


def _log_softmax(logits):
  logits = logits - logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_classification_loss_weights_and_smoothing_match_formula():
  logits = RNG.normal(size=(8, 3))
  labels = RNG.integers(0, 3, 8)
  weights = np.array([1.0, 2.0, 0.5])
  alpha = 0.1
  targets = (1 - alpha) * np.eye(3)[labels] + alpha / 3
  per_example = -(targets * _log_softmax(logits)).sum(-1)
  expected = (weights[labels] * per_example).sum() / weights[labels].sum()
  loss = classification_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
                                     class_weights=jnp.asarray(weights), label_smoothing=alpha)
  assert loss.shape == () and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  plain = classification_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(plain, -_log_softmax(logits)[np.arange(8), labels].mean(), rtol=1e-5)


def test_label_smoothing_penalises_overconfidence():
  confident = jnp.array([[20.0, -20.0]])
  labels = jnp.array([0])
  assert classification_loss(confident, labels) < 1e-6
  assert classification_loss(confident, labels, label_smoothing=0.2) > 1.0



def test_binary_auc_matches_sklearn_with_ties():
  labels = RNG.integers(0, 2, 500)
  scores = np.round(RNG.uniform(size=500) + 0.3 * labels, 1)  # Rounding makes many ties.
  np.testing.assert_allclose(binary_auc(scores, labels), roc_auc_score(labels, scores),
                             atol=1e-9)
  assert np.isnan(binary_auc(scores, np.ones(500)))


def _random_classification(n, k):
  labels = RNG.integers(0, k, n)
  logits = RNG.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
  probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return probabilities, labels


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_classification_metrics_match_sklearn_when_accumulated_in_batches(num_classes):
  probabilities, labels = _random_classification(300, num_classes)
  padded_probabilities = np.concatenate([probabilities, np.full((20, num_classes), 1 / num_classes)])
  padded_labels = np.concatenate([labels, np.zeros(20, int)])
  valid = np.arange(320) < 300
  # Two "hosts", each updating with batches of 64 whose last one is padded.
  hosts = [ClassificationMetrics(num_classes) for _ in range(2)]
  for start in range(0, 320, 64):
    batch = slice(start, start + 64)
    hosts[start // 64 % 2].update(padded_probabilities[batch], padded_labels[batch], valid[batch])
  result = hosts[0].merge(hosts[1]).compute()

  predictions = probabilities.argmax(1)
  if num_classes == 2:
    expected_auc = roc_auc_score(labels, probabilities[:, 1])
  else:
    expected_auc = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
  np.testing.assert_allclose(result["auc"], expected_auc, atol=1e-3)
  np.testing.assert_allclose(result["macro_f1"], f1_score(labels, predictions, average="macro"),
                             atol=1e-3)
  np.testing.assert_allclose(result["balanced_accuracy"],
                             balanced_accuracy_score(labels, predictions), atol=1e-3)
  np.testing.assert_allclose(result["accuracy"], np.mean(predictions == labels), atol=1e-9)
  # The AUC of all scores differs from the mean of per-batch AUCs, which is what we must not report.
  per_batch = np.mean([roc_auc_score(labels[s:s + 30] == 1, probabilities[s:s + 30, 1])
                       for s in range(0, 300, 30)])
  if num_classes == 2:
    assert abs(per_batch - result["auc"]) > 1e-4


def test_classification_rejects_wrong_shapes():
  with pytest.raises(ValueError, match=r"probabilities must have shape \(4, 3\), got \(4, 2\)"):
    ClassificationMetrics(3).update(np.zeros((4, 2)), np.zeros(4, int))
  with pytest.raises(ValueError, match=r"valid must have shape \(4,\)"):
    ClassificationMetrics(2).update(np.zeros((4, 2)), np.zeros(4, int), np.ones(3, bool))



def test_single_class_predictions_are_warned_about(caplog):
  collapsed = ClassificationMetrics(num_classes=2).update(
      np.tile([[0.7, 0.3]], (5, 1)), np.array([0, 0, 0, 1, 1]))
  varied = ClassificationMetrics(num_classes=2).update(
      np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([0, 1]))
  with caplog.at_level(logging.WARNING):
    assert warn_if_single_class_predicted(collapsed)
    assert not warn_if_single_class_predicted(varied)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "predicts class 0 for all 5 examples" in warnings[0]
  assert "class_weights=balanced" in warnings[0]


def test_the_kind_scores_with_its_own_loss_and_probabilities():
  kind = classification.KIND
  logits = jnp.asarray(RNG.normal(size=(6, 3)), jnp.float32)
  labels = jnp.array([0, 1, 2, 2, 1, 0])
  np.testing.assert_array_equal(kind.loss(logits, labels, label_smoothing=0.1),
                                classification_loss(logits, labels, label_smoothing=0.1))
  outputs = kind.eval_outputs(kind.probabilities(logits), labels)
  accumulator = kind.new_metrics(3)
  kind.update_metrics(accumulator, outputs, None)
  direct = ClassificationMetrics(3).update(np.asarray(outputs["probabilities"]), np.asarray(labels))
  assert accumulator.compute() == direct.compute()
  assert kind.balanced_class_weights and not kind.draws_extra_panel()


def test_the_kind_reads_the_image_labels_of_a_dataset():
  class Dataset:
    class_names, has_mask, has_label = ("normal", "pneumonia"), False, True
  assert classification.KIND.class_names(Dataset()) == ("normal", "pneumonia")
  assert classification.KIND.has_targets(Dataset())
