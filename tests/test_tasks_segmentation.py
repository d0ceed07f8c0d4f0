"""Tests of gradprom_jax.tasks.segmentation: its loss against direct numpy formulas (and finite
gradients), its pixel counts and split-level Dice/IoU, and the kind's interface."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.tasks import segmentation
from gradprom_jax.tasks.segmentation import (SegmentationMetrics, segmentation_counts,
                                             segmentation_loss)

RNG = np.random.default_rng(0)


def _log_softmax(logits):
  logits = logits - logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def _lesion_masks(n=2, size=16):
  masks = np.zeros((n, size, size), np.int32)
  masks[:, 4:10, 5:12] = 1
  return jnp.asarray(masks)


def test_segmentation_loss_multiclass_matches_ce_plus_foreground_dice():
  masks = jnp.asarray(RNG.integers(0, 3, (2, 8, 8)), jnp.int32)
  logits = jnp.asarray(RNG.normal(size=(2, 8, 8, 3)), jnp.float32)
  np_logits, np_masks = np.asarray(logits, np.float64), np.asarray(masks)
  ce = -np.take_along_axis(_log_softmax(np_logits), np_masks[..., None], -1).mean()
  probs = np.exp(_log_softmax(np_logits))[..., 1:]
  one_hot = np.eye(3)[np_masks][..., 1:]
  dice = (2 * (probs * one_hot).sum((1, 2)) + 1) / (probs.sum((1, 2)) + one_hot.sum((1, 2)) + 1)
  np.testing.assert_allclose(segmentation_loss(logits, masks, dice_weight=0.5),
                             ce + 0.5 * (1 - dice.mean()), rtol=1e-5)
  np.testing.assert_allclose(segmentation_loss(logits, masks, dice_weight=0.0), ce, rtol=1e-5)


@pytest.mark.parametrize("num_channels", [1, 2])
def test_segmentation_loss_rewards_the_right_mask(num_channels):
  masks = _lesion_masks()
  if num_channels == 1:
    right = 10.0 * (2.0 * masks[..., None] - 1.0)
  else:
    right = 10.0 * (2.0 * jax.nn.one_hot(masks, 2) - 1.0)
  wrong = -right
  good, bad = segmentation_loss(right, masks), segmentation_loss(wrong, masks)
  assert good.shape == () and good.dtype == jnp.float32
  assert float(good) < 0.01 and float(bad) > 10.0


def test_segmentation_loss_binary_bce_and_class_weights():
  masks = _lesion_masks()
  logits = jnp.asarray(RNG.normal(size=(2, 16, 16, 1)), jnp.float32)
  x, y = np.asarray(logits[..., 0], np.float64), np.asarray(masks, np.float64)
  bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
  weights = np.where(y == 1, 3.0, 1.0)
  np.testing.assert_allclose(
      segmentation_loss(logits, masks, dice_weight=0.0, class_weights=jnp.array([1.0, 3.0])),
      (weights * bce).sum() / weights.sum(), rtol=1e-5)



def test_segmentation_loss_has_finite_gradients():
  masks = _lesion_masks()
  logits = jnp.zeros((2, 16, 16, 2))
  grads = jax.jit(jax.grad(segmentation_loss))(logits, masks)
  assert bool(jnp.all(jnp.isfinite(grads))) and float(jnp.abs(grads).max()) > 0


def _random_masks(n, h, w, k):
  true = RNG.integers(0, k, (n, h, w))
  pred = np.where(RNG.uniform(size=(n, h, w)) < 0.7, true, RNG.integers(0, k, (n, h, w)))
  return pred.astype(np.int32), true.astype(np.int32)


@pytest.mark.parametrize("num_classes", [2, 4])
def test_segmentation_metrics_from_summed_counts(num_classes):
  pred, true = _random_masks(10, 12, 16, num_classes)
  counts_fn = jax.jit(segmentation_counts, static_argnums=2)
  accumulator = SegmentationMetrics(num_classes)
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
  result = SegmentationMetrics(2).update(segmentation_counts(pred, true, 2)).compute()
  np.testing.assert_allclose(result["dice"], 2 * 36 / (36 + 37))
  np.testing.assert_allclose(result["dice_per_image"], 0.5)


def test_segmentation_merge_equals_single_accumulator():
  pred, true = _random_masks(6, 8, 8, 3)
  counts = jax.device_get(segmentation_counts(pred, true, 3))
  whole = SegmentationMetrics(3).update(counts).compute()
  halves = [SegmentationMetrics(3).update({k: v[s] for k, v in counts.items()})
            for s in (slice(0, 3), slice(3, 6))]
  assert halves[0].merge(halves[1]).compute() == pytest.approx(whole)


def test_the_kind_scores_with_its_own_loss_and_pixel_counts():
  kind = segmentation.KIND
  masks = _lesion_masks()
  logits = jnp.asarray(RNG.normal(size=(2, 16, 16, 2)), jnp.float32)
  np.testing.assert_array_equal(kind.loss(logits, masks, dice_weight=0.3),
                                segmentation_loss(logits, masks, dice_weight=0.3))
  probabilities = kind.probabilities(logits)
  accumulator = kind.new_metrics(2)
  kind.update_metrics(accumulator, jax.device_get(kind.eval_outputs(probabilities, masks)),
                      np.array([True, False]))
  direct = SegmentationMetrics(2).update(
      jax.device_get(segmentation_counts(jnp.argmax(logits, -1)[:1], masks[:1], 2)))
  assert accumulator.compute() == direct.compute() and accumulator.images == 1
  assert kind.draws_extra_panel() and kind.target_key == "mask"


def test_the_kind_reads_the_mask_classes_of_a_dataset():
  class Dataset:
    mask_class_names, has_mask, has_label = None, True, False
  assert segmentation.KIND.class_names(Dataset()) == ("background", "lesion")
  assert segmentation.KIND.has_targets(Dataset())
