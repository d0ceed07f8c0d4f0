"""Tests of gradprom_jax.core.losses (the enhancement losses) against direct numpy formulas, and sanity of
their gradients; each task kind's loss is tested in test_tasks_<kind>.py."""

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


def test_enhancement_loss_has_finite_gradients():
  pred, target = _pair()
  grads = jax.jit(jax.grad(lambda p: losses.enhancement_loss(p, target, "l1", ssim_weight=0.1)))(pred)
  assert bool(jnp.all(jnp.isfinite(grads)))
