"""Tests of gradprom_jax.core.metrics against scikit-image / scikit-learn, and of set-level accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from gradprom_jax.core import metrics

RNG = np.random.default_rng(0)


def _image_pairs(n=3, h=24, w=20, c=3):
  target = RNG.uniform(size=(n, h, w, c)).astype(np.float32)
  noise = RNG.normal(scale=[[[[0.02]]], [[[0.1]]], [[[0.3]]]][:n], size=(n, h, w, c))
  return np.clip(target + noise, 0, 1).astype(np.float32), target


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_and_ssim_match_scikit_image(channels):
  pred, target = _image_pairs(c=channels)
  psnr = np.asarray(metrics.psnr(jnp.asarray(pred), jnp.asarray(target)))
  ssim = np.asarray(metrics.ssim(jnp.asarray(pred), jnp.asarray(target)))
  assert psnr.shape == ssim.shape == (3,)
  for i in range(3):
    np.testing.assert_allclose(psnr[i], peak_signal_noise_ratio(target[i], pred[i], data_range=1.0),
                               atol=1e-3)
    expected_ssim = structural_similarity(
        target[i], pred[i], data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False)
    np.testing.assert_allclose(ssim[i], expected_ssim, atol=1e-3)


def test_binary_auc_matches_sklearn_with_ties():
  labels = RNG.integers(0, 2, 500)
  scores = np.round(RNG.uniform(size=500) + 0.3 * labels, 1)  # Rounding makes many ties.
  np.testing.assert_allclose(metrics.binary_auc(scores, labels), roc_auc_score(labels, scores),
                             atol=1e-9)
  assert np.isnan(metrics.binary_auc(scores, np.ones(500)))


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
  hosts = [metrics.ClassificationMetrics(num_classes) for _ in range(2)]
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
    metrics.ClassificationMetrics(3).update(np.zeros((4, 2)), np.zeros(4, int))
  with pytest.raises(ValueError, match=r"valid must have shape \(4,\)"):
    metrics.ClassificationMetrics(2).update(np.zeros((4, 2)), np.zeros(4, int), np.ones(3, bool))


def _random_masks(n, h, w, k):
  true = RNG.integers(0, k, (n, h, w))
  pred = np.where(RNG.uniform(size=(n, h, w)) < 0.7, true, RNG.integers(0, k, (n, h, w)))
  return pred.astype(np.int32), true.astype(np.int32)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_segmentation_metrics_from_summed_counts(num_classes):
  pred, true = _random_masks(10, 12, 16, num_classes)
  counts_fn = jax.jit(metrics.segmentation_counts, static_argnums=2)
  accumulator = metrics.SegmentationMetrics(num_classes)
  for start in range(0, 12, 4):  # Batches of 4; the last is padded with 2 invalid examples.
    batch_pred = np.zeros((4, 12, 16), np.int32)
    batch_true = np.ones((4, 12, 16), np.int32)
    real = slice(start, min(start + 4, 10))
    batch_pred[:real.stop - start], batch_true[:real.stop - start] = pred[real], true[real]
    counts = jax.device_get(counts_fn(batch_pred, batch_true, num_classes))
    accumulator.update(counts, valid=np.arange(start, start + 4) < 10)
  result = accumulator.compute()

  # Reference: the whole set as one big image, foreground classes averaged.
  dices, ious, per_image = [], [], []
  for k in range(1, num_classes):
    p, t = pred == k, true == k
    dices.append(2 * (p & t).sum() / (p.sum() + t.sum()))
    ious.append((p & t).sum() / (p | t).sum())
    per_image.append([2 * (p[i] & t[i]).sum() / (p[i].sum() + t[i].sum()) for i in range(10)])
  np.testing.assert_allclose(result["dice"], np.mean(dices), atol=1e-9)
  np.testing.assert_allclose(result["iou"], np.mean(ious), atol=1e-9)
  np.testing.assert_allclose(result["pixel_accuracy"], np.mean(pred == true), atol=1e-9)
  np.testing.assert_allclose(result["dice_per_image"], np.mean(per_image), atol=1e-9)
  if num_classes > 2:
    np.testing.assert_allclose(result["dice_class2"], dices[1], atol=1e-9)


def test_segmentation_dice_is_global_not_mean_of_images():
  # One image with a large, well-found lesion, one with a tiny missed one.
  true = np.zeros((2, 8, 8), np.int32)
  true[0, :6, :6] = 1
  true[1, 0, 0] = 1
  pred = true.copy()
  pred[1, 0, 0] = 0
  result = metrics.SegmentationMetrics(2).update(metrics.segmentation_counts(pred, true, 2)).compute()
  np.testing.assert_allclose(result["dice"], 2 * 36 / (36 + 37))
  np.testing.assert_allclose(result["dice_per_image"], 0.5)


def test_segmentation_merge_equals_single_accumulator():
  pred, true = _random_masks(6, 8, 8, 3)
  counts = jax.device_get(metrics.segmentation_counts(pred, true, 3))
  whole = metrics.SegmentationMetrics(3).update(counts).compute()
  halves = [metrics.SegmentationMetrics(3).update({k: v[s] for k, v in counts.items()})
            for s in (slice(0, 3), slice(3, 6))]
  assert halves[0].merge(halves[1]).compute() == pytest.approx(whole)


def test_enhancement_metrics_accumulate_means_and_ignore_padding():
  pred, target = _image_pairs()
  psnr = np.asarray(metrics.psnr(jnp.asarray(pred), jnp.asarray(target)))
  ssim = np.asarray(metrics.ssim(jnp.asarray(pred), jnp.asarray(target)))
  first = metrics.EnhancementMetrics().update(psnr[:2], ssim[:2])
  second = metrics.EnhancementMetrics().update(np.append(psnr[2:], 0.0), np.append(ssim[2:], 0.0),
                                               valid=np.array([True, False]))
  result = first.merge(second).compute()
  assert result == pytest.approx({"psnr": psnr.mean(), "ssim": ssim.mean()})
