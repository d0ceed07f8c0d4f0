"""`samples.png`: one row per test example, degraded | enhanced | high quality | recognition.

For segmentation the last column is the enhanced image with the predicted lesion outline (red)
and the ground-truth outline (green); for classification the enhanced image's title reads the
predicted and the true class (green when right, red when wrong). Degraded inputs smaller than the
enhanced image are shown with nearest-neighbour upsampling, so the panel shows its real pixels.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend state), so it is
safe to call from a training process without a display.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

TASKS = ("segmentation", "classification")
_PREDICTED_COLOR, _TRUE_COLOR = "red", "lime"


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


def _class_name(index: int, class_names: Sequence[str] | None) -> str:
  return class_names[index] if class_names is not None else str(index)


def save_sample_grid(path: str | os.PathLike[str], *, degraded: np.ndarray,
                     enhanced: np.ndarray, high_quality: np.ndarray,
                     predictions: np.ndarray | None = None, targets: np.ndarray | None = None,
                     task: str = "segmentation", class_names: Sequence[str] | None = None,
                     panel_pixels: int = 160) -> None:
  """Writes a PNG grid of examples; each panel is `panel_pixels` square.

  Args:
    path: the PNG to write (parent directories are created).
    degraded, enhanced, high_quality: (N, H, W, C) images in [0, 1], C = 1 or 3; `degraded`
      may have a smaller H, W.
    predictions: segmentation: (N, H, W) int class masks; classification: (N,) int classes.
    targets: the ground truth, same shape as `predictions`.
    task: "segmentation" (adds a fourth column) or "classification" (labels in titles).
    class_names: names of the classes, for classification titles.

  >>> import tempfile, PIL.Image
  >>> rng = np.random.default_rng(0)
  >>> hq = rng.random((2, 16, 16, 1), dtype=np.float32)
  >>> masks = (hq[..., 0] > 0.5).astype(np.int32)
  >>> path = tempfile.mkdtemp() + "/samples.png"
  >>> save_sample_grid(path, degraded=hq[:, ::4, ::4], enhanced=hq, high_quality=hq,
  ...                  predictions=masks, targets=masks, panel_pixels=64)
  >>> PIL.Image.open(path).size  # 4 columns x 2 rows of 64-pixel panels.
  (256, 128)
  """
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")
  degraded = _check_images("degraded", degraded)
  enhanced = _check_images("enhanced", enhanced)
  high_quality = _check_images("high_quality", high_quality)
  n, height, width, _ = enhanced.shape
  if len(degraded) != n or high_quality.shape != enhanced.shape:
    raise ValueError(f"expected {n} examples of shape {enhanced.shape[1:]}: got degraded "
                     f"{degraded.shape}, high_quality {high_quality.shape}")
  for name, labels in (("predictions", predictions), ("targets", targets)):
    if labels is not None:
      expected = (n, height, width) if task == "segmentation" else (n,)
      if np.shape(labels) != expected:
        raise ValueError(f"{name} for {task} must have shape {expected}, got {np.shape(labels)}")

  show_masks = task == "segmentation" and (predictions is not None or targets is not None)
  columns = 4 if show_masks else 3
  dpi = 100
  figure = Figure(figsize=(columns * panel_pixels / dpi, n * panel_pixels / dpi), dpi=dpi)
  FigureCanvasAgg(figure)
  axes = figure.subplots(n, columns, squeeze=False)
  figure.subplots_adjust(left=0, right=1, bottom=0, top=1, wspace=0.02, hspace=0.12)
  scale = height / degraded.shape[1]
  titles = [f"degraded (x{scale:g})" if scale != 1 else "degraded", "enhanced", "high quality",
            "pred (red) / true (green)"]
  gray = {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
  for row in range(n):
    panels = [_upsample_nearest(degraded[row], height, width), enhanced[row], high_quality[row]]
    if show_masks:
      panels.append(enhanced[row])
    for column, image in enumerate(panels):
      ax = axes[row, column]
      ax.imshow(_displayable(image), interpolation="nearest", **gray)
      ax.set_axis_off()
      ax.set_title(titles[column], fontsize=7, pad=2)
    if show_masks:
      for mask, color in ((targets, _TRUE_COLOR), (predictions, _PREDICTED_COLOR)):
        if mask is not None and np.any(mask[row] > 0):
          axes[row, 3].contour(np.asarray(mask[row]) > 0, levels=[0.5], colors=color,
                               linewidths=1.0)
    elif task == "classification" and predictions is not None:
      predicted = _class_name(int(predictions[row]), class_names)
      title = f"pred {predicted}"
      color = "black"
      if targets is not None:
        title += f" / true {_class_name(int(targets[row]), class_names)}"
        color = "green" if int(predictions[row]) == int(targets[row]) else "red"
      axes[row, 1].set_title(title, fontsize=7, pad=2, color=color)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=dpi)
