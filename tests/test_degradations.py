"""Tests of gradprom_jax.core.degradations: exactness on constants, noise levels, seeding, parsing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from gradprom_jax.core import degradations


def _smooth_images(n=2, h=32, w=32, c=3, seed=0):
  """Random low-frequency sinusoid mixtures in [0.1, 0.9] (numpy: no compilation)."""
  rng = np.random.default_rng(seed)
  y, x = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
  freqs = rng.uniform(0.5, 2.0, (n, c, 2))
  phases = rng.uniform(0, 2 * np.pi, (n, c))
  waves = np.sin(2 * np.pi * (freqs[..., 0, None, None] * y + freqs[..., 1, None, None] * x)
                 + phases[..., None, None])
  return jnp.asarray(0.5 + 0.4 * waves.transpose(0, 2, 3, 1), jnp.float32)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("value", [0.0, 0.37, 1.0])
def test_downsample_constant_stays_constant(scale, value):
  images = jnp.full((2, 16, 24, 3), value, jnp.float32)
  small = degradations.downsample(images, scale)
  assert small.shape == (2, 16 // scale, 24 // scale, 3)
  assert small.dtype == jnp.float32
  np.testing.assert_allclose(small, value, atol=1e-6)


def test_downsample_is_antialiased():
  # A checkerboard at the Nyquist frequency must average to grey, not alias.
  checker = (jnp.indices((16, 16)).sum(0) % 2).astype(jnp.float32)
  small = degradations.downsample(checker[None, :, :, None], 2)
  np.testing.assert_allclose(small, 0.5, atol=0.05)


@pytest.mark.parametrize("scale", [2, 4])
def test_downsample_matches_pil_antialiased_bicubic(scale):
  # PIL's BICUBIC resize (a = -0.5, kernel widened by the scale) is the independent reference.
  images = np.asarray(_smooth_images(n=1, h=32, w=24, c=2))
  expected = np.stack([np.asarray(Image.fromarray(images[0, :, :, c]).resize(
      (24 // scale, 32 // scale), Image.BICUBIC)) for c in range(2)], -1)
  np.testing.assert_allclose(degradations.downsample(jnp.asarray(images), scale)[0],
                             np.clip(expected, 0, 1), atol=1e-5)


def test_downsample_then_upsample_approximates_smooth_image():
  images = _smooth_images()
  restored = degradations.upsample(degradations.downsample(images, 2), 2)
  assert restored.shape == images.shape
  assert float(jnp.abs(restored - images).mean()) < 0.02


def test_outputs_are_clipped_to_unit_range():
  # A sharp edge makes bicubic overshoot; noise leaves the range: both clipped.
  edge = jnp.zeros((1, 16, 16, 1)).at[:, :, 8:].set(1.0)
  key = jax.random.key(0)
  for out in (degradations.upsample(edge, 4), degradations.downsample(edge, 2),
              degradations.gaussian_noise(key, edge, 0.5),
              degradations.poisson_noise(key, edge, 5.0)):
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_blur_preserves_constants_and_smooths():
  constant = jnp.full((1, 9, 9, 2), 0.8)
  np.testing.assert_allclose(degradations.gaussian_blur(constant, 1.5), 0.8, atol=1e-6)
  impulse = jnp.zeros((1, 21, 21, 1)).at[0, 10, 10, 0].set(1.0)
  blurred = degradations.gaussian_blur(impulse, 1.0)
  assert blurred.shape == impulse.shape
  # The mass is kept away from the borders, and spread with variance sigma^2.
  np.testing.assert_allclose(float(blurred.sum()), 1.0, atol=1e-5)
  offsets = jnp.arange(21) - 10
  variance_along_rows = float((blurred[0, :, :, 0].sum(1) * offsets**2).sum())
  np.testing.assert_allclose(variance_along_rows, 1.0, rtol=0.02)


def test_gaussian_noise_sigma_measured_back_within_5_percent():
  images = jnp.full((4, 64, 64, 1), 0.5)
  sigma = 0.1
  noisy = degradations.gaussian_noise(jax.random.key(1), images, sigma)
  measured = float(jnp.std(noisy - images))
  assert abs(measured - sigma) / sigma < 0.05
  assert abs(float(jnp.mean(noisy - images))) < 0.01


def test_poisson_noise_variance_matches_photon_count():
  images = jnp.full((4, 64, 64, 1), 0.4)
  photons = 100.0
  noisy = degradations.poisson_noise(jax.random.key(2), images, photons)
  expected_sigma = np.sqrt(0.4 / photons)
  measured = float(jnp.std(noisy))
  assert abs(measured - expected_sigma) / expected_sigma < 0.05
  assert abs(float(noisy.mean()) - 0.4) < 0.01


@pytest.mark.parametrize("spec", ["gaussian_noise(sigma=0.1)", "poisson_noise(photons=30)",
                                  "blur(sigma=1.0) > downsample(scale=2) > gaussian_noise(sigma=0.05)"])
def test_same_seed_same_output_other_seed_different(spec):
  degrade = jax.jit(degradations.parse_degradation(spec))
  images = _smooth_images()
  first = degrade(jax.random.key(3), images)
  np.testing.assert_array_equal(first, degrade(jax.random.key(3), images))
  assert float(jnp.abs(first - degrade(jax.random.key(4), images)).max()) > 0.01


def test_composition_draws_independent_noise_per_op():
  # Two independent sigma noises add in quadrature (sqrt 2 sigma); reusing a key would give 2 sigma.
  degrade = degradations.parse_degradation("gaussian_noise(sigma=0.05) > gaussian_noise(sigma=0.05)")
  images = jnp.full((4, 64, 64, 1), 0.5)
  measured = float(jnp.std(degrade(jax.random.key(5), images) - images))
  np.testing.assert_allclose(measured, 0.05 * np.sqrt(2), rtol=0.05)


def test_parse_composition_matches_manual_application():
  degrade = degradations.parse_degradation(
      "blur(sigma=1.0) > downsample(scale=4) > gaussian_noise(sigma=0.02)")
  assert degrade.scale == 4
  assert degradations.parse_degradation(degrade.spec) == degrade
  images = _smooth_images(h=32, w=32)
  key = jax.random.key(6)
  _, _, noise_key = jax.random.split(key, 3)
  expected = degradations.gaussian_noise(
      noise_key, degradations.downsample(degradations.gaussian_blur(images, 1.0), 4), 0.02)
  np.testing.assert_allclose(degrade(key, images), expected, atol=1e-6)


def test_scale_multiplies_and_identity():
  assert degradations.parse_degradation("downsample(scale=2) > downsample(scale=2)").scale == 4
  for spec in ("", "none", " None "):
    identity = degradations.parse_degradation(spec)
    assert identity.scale == 1 and identity.spec == "none"
    images = _smooth_images()
    np.testing.assert_array_equal(identity(jax.random.key(0), images), images)


@pytest.mark.parametrize("spec, message", [
    ("sharpen(amount=2)", "unknown degradation op 'sharpen'; valid: blur, downsample"),
    ("downsample(factor=2)", "unknown parameter 'factor=2' of downsample; valid: scale"),
    ("downsample()", "downsample needs parameter(s) scale"),
    ("downsample(scale=2.5)", "scale must be an integer"),
    ("gaussian_noise(sigma=-0.1)", "sigma must be a positive number"),
    ("gaussian_noise(sigma=abc)", "is not a number"),
])
def test_parse_errors_name_the_bad_part(spec, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    degradations.parse_degradation(spec)


def test_check_image_size():
  degrade = degradations.parse_degradation("downsample(scale=4)")
  degrade.check_image_size(192, 256)
  with pytest.raises(ValueError, match="does not divide the image size 28x30"):
    degrade.check_image_size(28, 30)
