"""`samples.png`: one row per test example, degraded | enhanced | high quality | recognition.

Each task's kind draws its predictions (``TaskKind.draw``): for segmentation a last column, the
enhanced image with the predicted lesion outline (red) and the ground-truth outline (green); for
classification the enhanced image's title adds the class predicted from it (green when right, red
when wrong) and the high-quality image's title the true class; a run of both tasks draws the
outlines and the classes. Degraded inputs smaller than the enhanced image are shown with nearest-neighbour
upsampling, so the panel shows its real pixels. Each example is a band of titles above its panels,
and the PNG stores the number of examples (`EXAMPLES_KEY`), so a grid cuts back into examples.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend state), so it is
safe to call from a training process without a display.
"""

from __future__ import annotations

import os
import dataclasses
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradprom_jax.tasks import TaskKind

PANEL_PIXELS = 160
TITLE_PIXELS = 14   # Above each panel, for its title.
# PNG text key holding the number of examples (rows), so the grid can be cut into examples again.
EXAMPLES_KEY = "Examples"


def _check_images(name: str, images: np.ndarray) -> np.ndarray:
  images = np.asarray(images, dtype=np.float32)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{name} must be (N, H, W, 1 or 3) in [0, 1], got shape {images.shape}")
  return images


def _displayable(image: np.ndarray) -> np.ndarray:
  """(H, W, C) float -> (H, W) or (H, W, 3) clipped to [0, 1] for imshow."""
  image = np.clip(image, 0.0, 1.0)
  return image[..., 0] if image.shape[-1] == 1 else image


def _upsample_nearest(image: np.ndarray, height: int, width: int) -> np.ndarray:
  rows = np.arange(height) * image.shape[0] // height
  cols = np.arange(width) * image.shape[1] // width
  return image[rows][:, cols]


@dataclasses.dataclass(frozen=True)
class DrawnTask:
  """One task's predictions and targets (either may be None) for the grid's examples."""
  kind: TaskKind
  predictions: np.ndarray | None
  targets: np.ndarray | None = None
  class_names: Sequence[str] | None = None


def save_sample_grid(path: str | os.PathLike[str], *, degraded: np.ndarray, enhanced: np.ndarray,
                   high_quality: np.ndarray, tasks: Sequence[DrawnTask] = (),
                   panel_pixels: int = PANEL_PIXELS) -> None:
  """Writes a PNG grid of examples, each panel ``panel_pixels`` square, each of ``tasks`` drawn by
  its kind, in order.

  Args:
    path: the PNG to write (parent directories are created).
    degraded, enhanced, high_quality: (N, H, W, C) images in [0, 1], C = 1 or 3; ``degraded``
      may have a smaller H, W.
    tasks: what is drawn on the rows: each task's kind, its N predictions and targets (of the
      kind's ``example_shape``; either may be None) and class names.

  >>> import tempfile, PIL.Image
  >>> from gradprom_jax.tasks import task_kind
  >>> hq = np.zeros((2, 16, 16, 1), np.float32)
  >>> path = tempfile.mkdtemp() + "/samples.png"
  >>> save_sample_grid(path, degraded=hq, enhanced=hq, high_quality=hq, panel_pixels=64,
  ...                  tasks=[DrawnTask(task_kind("classification"), np.array([0, 1]))])
  >>> PIL.Image.open(path).size  # 3 columns: classification adds no panel.
  (192, 156)
  """
  degraded = _check_images("degraded", degraded)
  enhanced = _check_images("enhanced", enhanced)
  high_quality = _check_images("high_quality", high_quality)
  n, height, width, _ = enhanced.shape
  if len(degraded) != n or high_quality.shape != enhanced.shape:
    raise ValueError(f"expected {n} examples of shape {enhanced.shape[1:]}: got degraded "
                     f"{degraded.shape}, high_quality {high_quality.shape}")
  for drawn in tasks:
    expected = (n, *drawn.kind.example_shape(height, width))
    for name, labels in (("predictions", drawn.predictions), ("targets", drawn.targets)):
      if labels is not None and np.shape(labels) != expected:
        raise ValueError(f"{drawn.kind.name} {name} must have shape {expected}, got "
                         f"{np.shape(labels)}")
  extra_panel = any(drawn.kind.draws_extra_panel() for drawn in tasks)
  columns = 4 if extra_panel else 3
  dpi = 100
  # Each example is a band of its titles above its panels, so the PNG cuts into examples evenly.
  band = panel_pixels + TITLE_PIXELS
  figure = Figure(figsize=(columns * panel_pixels / dpi, n * band / dpi), dpi=dpi)
  FigureCanvasAgg(figure)
  axes = np.array([[figure.add_axes(((column + 0.01) / columns, 1 - ((row + 1) * band) / (n * band),
                                     0.98 / columns, panel_pixels / (n * band)))
                    for column in range(columns)] for row in range(n)])
  scale = height / degraded.shape[1]
  titles = [f"degraded (x{scale:g})" if scale != 1 else "degraded", "enhanced", "high quality",
            "pred (red) / true (green)"]
  gray = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
  for row in range(n):
    panels = [_upsample_nearest(degraded[row], height, width), enhanced[row], high_quality[row]]
    if extra_panel:
      panels.append(enhanced[row])
    for column, image in enumerate(panels):
      ax = axes[row, column]
      ax.imshow(_displayable(image), interpolation="nearest", **gray)
      ax.set_axis_off()
      ax.set_title(titles[column], fontsize=7, pad=2)
    for drawn in tasks:
      row_of = lambda labels: None if labels is None else np.asarray(labels)[row]
      drawn.kind.draw(axes[row], row_of(drawn.predictions), row_of(drawn.targets),
                      None if drawn.class_names is None else tuple(drawn.class_names))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=dpi, metadata={EXAMPLES_KEY: str(n)})
