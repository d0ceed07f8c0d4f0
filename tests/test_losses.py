"""Tests of gradprom_jax.core.losses against direct numpy formulas, and sanity of their gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.core import losses, metrics

RNG = np.random.default_rng(0)


def _pair(shape=(2, 16, 16, 3)):
  return (jnp.asarray(RNG.uniform(size=shape), jnp.float32),
          jnp.asarray(RNG.uniform(size=shape), jnp.float32))


def test_pixel_losses_match_numpy_and_vanish_on_equal_images():
  pred, target = _pair()
  diff = np.asarray(pred) - np.asarray(target)
  np.testing.assert_allclose(losses.l1_loss(pred, target), np.abs(diff).mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.mse_loss(pred, target), (diff**2).mean(), rtol=1e-5)
  np.testing.assert_allclose(losses.charbonnier_loss(pred, target, eps=0.01),
                             np.sqrt(diff**2 + 1e-4).mean(), rtol=1e-5)
  for kind in ("l1", "mse"):
    loss = losses.enhancement_loss(pred, pred, kind=kind, ssim_weight=0.5)
    assert loss.shape == () and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, 0.0, atol=1e-5)


def test_charbonnier_is_smooth_at_zero_and_l1_like_far_away():
  zero_grad = jax.grad(lambda p: losses.charbonnier_loss(p, jnp.zeros(4)))(jnp.zeros(4))
  np.testing.assert_array_equal(zero_grad, 0.0)
  far = losses.charbonnier_loss(jnp.full(4, 0.5), jnp.zeros(4))
  np.testing.assert_allclose(far, 0.5, rtol=1e-4)


def test_ssim_term_is_one_minus_ssim_and_weighted():
  pred, target = _pair()
  ssim = float(jnp.mean(metrics.ssim(pred, target)))
  np.testing.assert_allclose(losses.ssim_loss(pred, target), 1 - ssim, rtol=1e-5)
  np.testing.assert_allclose(losses.enhancement_loss(pred, target, "charbonnier", ssim_weight=0.3),
                             losses.charbonnier_loss(pred, target) + 0.3 * (1 - ssim), rtol=1e-5)


def test_enhancement_loss_rejects_unknown_kind():
  with pytest.raises(ValueError, match="unknown enhancement loss kind 'huber'; valid: l1, mse"):
    losses.enhancement_loss(jnp.zeros(3), jnp.zeros(3), kind="huber")


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
  loss = losses.classification_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
                                     class_weights=jnp.asarray(weights), label_smoothing=alpha)
  assert loss.shape == () and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  plain = losses.classification_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(plain, -_log_softmax(logits)[np.arange(8), labels].mean(), rtol=1e-5)


def test_label_smoothing_penalises_overconfidence():
  confident = jnp.array([[20.0, -20.0]])
  labels = jnp.array([0])
  assert losses.classification_loss(confident, labels) < 1e-6
  assert losses.classification_loss(confident, labels, label_smoothing=0.2) > 1.0


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
  np.testing.assert_allclose(losses.segmentation_loss(logits, masks, dice_weight=0.5),
                             ce + 0.5 * (1 - dice.mean()), rtol=1e-5)
  np.testing.assert_allclose(losses.segmentation_loss(logits, masks, dice_weight=0.0), ce, rtol=1e-5)


@pytest.mark.parametrize("num_channels", [1, 2])
def test_segmentation_loss_rewards_the_right_mask(num_channels):
  masks = _lesion_masks()
  if num_channels == 1:
    right = 10.0 * (2.0 * masks[..., None] - 1.0)
  else:
    right = 10.0 * (2.0 * jax.nn.one_hot(masks, 2) - 1.0)
  wrong = -right
  good, bad = losses.segmentation_loss(right, masks), losses.segmentation_loss(wrong, masks)
  assert good.shape == () and good.dtype == jnp.float32
  assert float(good) < 0.01 and float(bad) > 10.0


def test_segmentation_loss_binary_bce_and_class_weights():
  masks = _lesion_masks()
  logits = jnp.asarray(RNG.normal(size=(2, 16, 16, 1)), jnp.float32)
  x, y = np.asarray(logits[..., 0], np.float64), np.asarray(masks, np.float64)
  bce = np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
  weights = np.where(y == 1, 3.0, 1.0)
  np.testing.assert_allclose(
      losses.segmentation_loss(logits, masks, dice_weight=0.0, class_weights=jnp.array([1.0, 3.0])),
      (weights * bce).sum() / weights.sum(), rtol=1e-5)


def _classification_case():
  labels = jnp.array([0, 0, 0, 1, 2, 2, 1, 0])
  logits = jnp.asarray(RNG.normal(size=(8, 3)), jnp.float32)
  return (lambda parts, **kw: losses.classification_loss(logits[parts], labels[parts], **kw),
          labels, jnp.array([0.2, 1.0, 3.0]))


def _segmentation_case():
  masks = jnp.asarray(RNG.uniform(size=(8, 16, 16)) > np.linspace(0.1, 0.9, 8)[:, None, None],
                      jnp.int32)
  logits = jnp.asarray(RNG.normal(size=(8, 16, 16, 2)), jnp.float32)
  return (lambda parts, **kw: losses.segmentation_loss(logits[parts], masks[parts], **kw),
          masks, jnp.array([1.0, 4.0]))


@pytest.mark.parametrize("case", [_classification_case, _segmentation_case])
def test_parts_of_a_batch_average_to_its_loss_with_their_share_of_its_weight_sum(case):
  # A batch split in 4 (devices, micro-batches): each part divides by 1/4 of the whole Σ w, so the
  # parts' mean is the whole's Σ w·ℓ / Σ w; each part's own Σ w (the default) would not give it.
  loss, labels, weights = case()
  whole = loss(slice(None), class_weights=weights)
  share = losses.class_weight_sum(labels, weights) / 4
  parts = [slice(i, i + 2) for i in range(0, 8, 2)]
  shared = np.mean([loss(p, class_weights=weights, normalizer=share) for p in parts])
  own = np.mean([loss(p, class_weights=weights) for p in parts])
  np.testing.assert_allclose(shared, whole, rtol=1e-6)
  assert abs(own - whole) > 1e-3
  # Without class weights every term is a mean over equal parts (soft Dice is per image).
  np.testing.assert_allclose(np.mean([loss(p) for p in parts]), loss(slice(None)), rtol=1e-6)


def test_losses_have_finite_gradients():
  masks = _lesion_masks()
  logits = jnp.zeros((2, 16, 16, 2))
  grads = jax.jit(jax.grad(losses.segmentation_loss))(logits, masks)
  assert bool(jnp.all(jnp.isfinite(grads))) and float(jnp.abs(grads).max()) > 0
  pred, target = _pair()
  grads = jax.jit(jax.grad(lambda p: losses.enhancement_loss(p, target, "l1", ssim_weight=0.1)))(pred)
  assert bool(jnp.all(jnp.isfinite(grads)))
