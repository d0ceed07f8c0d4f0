"""Tests for gradprom_jax.visualization: PNG size, overlays actually drawn, labels, input checks."""

import numpy as np
import PIL.Image
import pytest

from gradprom_jax.visualization import save_sample_grid


def _images(n=3, size=32, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  high_quality = rng.random((n, size, size, channels), dtype=np.float32) * 0.5
  return high_quality[:, ::2, ::2], high_quality, high_quality


def test_segmentation_grid_size_and_outlines(tmp_path):
  degraded, enhanced, high_quality = _images()
  masks = np.zeros((3, 32, 32), np.int32)
  masks[:, 8:24, 8:24] = 1
  path = tmp_path / "out" / "samples.png"
  save_sample_grid(path, degraded=degraded, enhanced=enhanced, high_quality=high_quality,
                   predictions=masks, targets=np.zeros_like(masks), panel_pixels=100)
  image = np.asarray(PIL.Image.open(path).convert("RGB")).astype(int)
  assert image.shape == (300, 400, 3)
  # The red prediction outline shows in the fourth column only (images are at most 0.5 bright).
  red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
  assert red[:, 300:].sum() > 50
  assert red[:, :300].sum() == 0


def test_classification_grid_grayscale(tmp_path):
  degraded, enhanced, high_quality = _images(n=2, channels=1)
  path = tmp_path / "samples.png"
  save_sample_grid(path, degraded=degraded, enhanced=enhanced, high_quality=high_quality,
                   predictions=np.array([0, 1]), targets=np.array([0, 0]),
                   task="classification", class_names=["normal", "pneumonia"], panel_pixels=80)
  assert PIL.Image.open(path).size == (240, 160)


def test_rejects_mismatched_inputs(tmp_path):
  degraded, enhanced, high_quality = _images()
  with pytest.raises(ValueError, match=r"predictions for segmentation must have shape \(3, 32, 32\)"):
    save_sample_grid(tmp_path / "x.png", degraded=degraded, enhanced=enhanced,
                     high_quality=high_quality, predictions=np.zeros((3,), np.int32))
  with pytest.raises(ValueError, match="task must be one of"):
    save_sample_grid(tmp_path / "x.png", degraded=degraded, enhanced=enhanced,
                     high_quality=high_quality, task="detection")
  with pytest.raises(ValueError, match="enhanced must be"):
    save_sample_grid(tmp_path / "x.png", degraded=degraded, enhanced=enhanced[..., :2],
                     high_quality=high_quality)
