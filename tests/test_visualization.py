"""Tests for gradprom_jax.training.visualization (PNG size, overlays actually drawn, labels, input checks) and
the pictures of experiments.tools.comparison_plots (grid size, legends, colours)."""

import numpy as np
import PIL.Image
import pytest

from experiments.tools import comparison_plots
from gradprom_jax.tasks import task_kind
from gradprom_jax.training.visualization import TITLE_PIXELS, DrawnTask, save_sample_grid

SEGMENTATION, CLASSIFICATION = task_kind("segmentation"), task_kind("classification")


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
                   tasks=[DrawnTask(SEGMENTATION, masks, np.zeros_like(masks))], panel_pixels=100)
  image = np.asarray(PIL.Image.open(path).convert("RGB")).astype(int)
  assert image.shape == (3 * (100 + TITLE_PIXELS), 400, 3)
  # The red prediction outline shows in the fourth column only (images are at most 0.5 bright).
  red = (image[..., 0] > 200) & (image[..., 1] < 80) & (image[..., 2] < 80)
  assert red[:, 300:].sum() > 50
  assert red[:, :300].sum() == 0


def test_classification_grid_grayscale(tmp_path):
  degraded, enhanced, high_quality = _images(n=2, channels=1)
  path = tmp_path / "samples.png"
  save_sample_grid(path, degraded=degraded, enhanced=enhanced, high_quality=high_quality,
                   tasks=[DrawnTask(CLASSIFICATION, np.array([0, 1]), np.array([0, 0]),
                                    ["normal", "pneumonia"])], panel_pixels=80)
  assert PIL.Image.open(path).size == (240, 2 * (80 + TITLE_PIXELS))


def test_rejects_mismatched_inputs(tmp_path):
  degraded, enhanced, high_quality = _images()
  with pytest.raises(ValueError, match=r"segmentation predictions must have shape \(3, 32, 32\)"):
    save_sample_grid(tmp_path / "x.png", degraded=degraded, enhanced=enhanced,
                     high_quality=high_quality,
                     tasks=[DrawnTask(SEGMENTATION, np.zeros((3,), np.int32))])
  with pytest.raises(ValueError, match=r"classification targets must have shape \(3,\)"):
    save_sample_grid(tmp_path / "x.png", degraded=degraded, enhanced=enhanced,
                     high_quality=high_quality,
                     tasks=[DrawnTask(CLASSIFICATION, np.zeros(3, int), np.zeros(2, int))])
  with pytest.raises(ValueError, match="enhanced must be"):
    save_sample_grid(tmp_path / "x.png", degraded=degraded, enhanced=enhanced[..., :2],
                     high_quality=high_quality)


def _capture_figures(monkeypatch):
  """Figures saved through `Figure.savefig` (still written), for inspecting their artists."""
  from matplotlib.figure import Figure
  figures, savefig = [], Figure.savefig

  def capture(figure, *args, **kwargs):
    figures.append(figure)
    return savefig(figure, *args, **kwargs)

  monkeypatch.setattr(Figure, "savefig", capture)
  return figures


def test_classification_grid_keeps_enhanced_as_the_middle_title(tmp_path, monkeypatch):
  figures = _capture_figures(monkeypatch)
  degraded, enhanced, high_quality = _images(n=2, channels=1)
  save_sample_grid(tmp_path / "samples.png", degraded=degraded, enhanced=enhanced,
                   high_quality=high_quality,
                   tasks=[DrawnTask(CLASSIFICATION, np.array([0, 1]), np.array([0, 0]),
                                    ["normal", "pneumonia"])])
  axes = figures[0].axes
  titles = [a.get_title() for a in axes]
  assert titles[:3] == ["degraded (x2)", "enhanced: pred normal", "high quality: true normal"]
  assert titles[4] == "enhanced: pred pneumonia"
  assert axes[1].title.get_color() == "green" and axes[4].title.get_color() == "red"


def test_samples_by_row_is_a_rows_by_examples_grid_a_screen_shows(tmp_path):
  # Nine rows of six examples, three 160-pixel panels each (as compare.py meets them).
  degraded, enhanced, high_quality = _images(n=6, channels=1)
  grids = {}
  for row in range(9):
    grids[f"row {row}"] = tmp_path / f"row{row}" / "samples.png"
    save_sample_grid(grids[f"row {row}"], degraded=degraded, enhanced=enhanced,
                     high_quality=high_quality,
                     tasks=[DrawnTask(CLASSIFICATION, np.zeros(6, int), np.zeros(6, int))])
  assert PIL.Image.open(grids["row 0"]).size == (480, 6 * (160 + TITLE_PIXELS))
  path = comparison_plots.plot_sample_grids(tmp_path / "plots" / "samples_by_row.png", grids)
  width, height = PIL.Image.open(path).size
  assert max(width, height) <= comparison_plots.MAX_SIDE
  assert width > 3 * 480   # Four examples side by side, not one grid stacked under another.
  assert comparison_plots.example_strips(grids["row 0"])[0].shape == (160 + TITLE_PIXELS, 480, 3)


def test_legends_sit_outside_the_axes(tmp_path, monkeypatch):
  figures = _capture_figures(monkeypatch)
  steps = np.arange(1, 6)
  curves = {f"row {i}": [(steps, steps * (i + 1.0))] for i in range(4)}
  comparison_plots.plot_metric_curves(tmp_path / "val.png", curves, "psnr",
                                      comparison_plots.row_colors(list(curves)), reference=3.0)
  axes = figures[0].axes[0]
  renderer = figures[0].canvas.get_renderer()
  legend_box = axes.get_legend().get_window_extent(renderer)
  assert not legend_box.overlaps(axes.get_window_extent(renderer))
  assert legend_box.x0 > axes.get_window_extent(renderer).x1   # To the right, inside the PNG.
  assert legend_box.x1 <= figures[0].bbox.x1 + 1


def test_row_and_reference_colours_are_pairwise_different():
  from matplotlib import colors
  names = [f"row {i}" for i in range(30)]
  assigned = [*comparison_plots.row_colors(names).values(),
              *comparison_plots.REFERENCE_COLORS.values()]
  hexes = [colors.to_hex(c) for c in assigned]
  assert len(set(hexes)) == len(hexes) == 32
