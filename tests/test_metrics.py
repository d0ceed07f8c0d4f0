"""Tests of gradprom_jax.core.metrics (PSNR, SSIM) against scikit-image, and of set-level accumulation;
each task kind's metrics are tested in test_tasks_<kind>.py."""

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

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


def test_enhancement_metrics_accumulate_means_and_ignore_padding():
  pred, target = _image_pairs()
  psnr = np.asarray(metrics.psnr(jnp.asarray(pred), jnp.asarray(target)))
  ssim = np.asarray(metrics.ssim(jnp.asarray(pred), jnp.asarray(target)))
  first = metrics.EnhancementMetrics().update(psnr[:2], ssim[:2])
  second = metrics.EnhancementMetrics().update(np.append(psnr[2:], 0.0), np.append(ssim[2:], 0.0),
                                               valid=np.array([True, False]))
  result = first.merge(second).compute()
  assert result == pytest.approx({"psnr": psnr.mean(), "ssim": ssim.mean()})
