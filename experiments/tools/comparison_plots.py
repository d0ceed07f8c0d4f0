"""The comparison's plots, one PNG each, drawn with matplotlib's object API on an Agg canvas.

No pyplot: every figure is a `matplotlib.figure.Figure` of its own, so nothing leaks between plots or
into the caller's matplotlib state. A row keeps its colour (`row_colors`, by position) in every
plot; the references (no enhancement, high-quality input) are black and grey, which no row gets.
Legends sit outside the axes, so they never hide a curve.

  val_psnr.png, val_<task>.png     validation metric vs step, mean over seeds ± std band
  final_psnr_vs_<task>.png         test PSNR vs task metric, one point per row and seed
  cosine_hist_<row>.png            gradprom rows: every logged cos(g_enh, g_task)
  gate_<row>.png                   gradprom rows: gate-open rate (cumulative) and gate vs step
  samples_by_row.png               rows x examples: each row's first examples of its samples.png
                                   (first seed that has one), at most MAX_SIDE pixels on a side

A multi-task run's per-task keys (``dice/segmentation``, ``cosine/classification``) name files with
the ``/`` as ``_`` (``val_dice_segmentation.png``, ``cosine_hist_<row>_classification.png``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from gradprom_jax.training import visualization

DPI = 100
# The longest side of samples_by_row.png, so that a screen shows it whole.
MAX_SIDE = 2000
REFERENCE_COLORS = {"no_enhancement": "black", "hq_input": "grey"}


def row_colors(names: Sequence[str]) -> dict[str, str]:
  """A colour per row, all different and none grey or black (the references' colours).

  tab10 then tab20's light shades without their greys (18 colours), then evenly spaced hues.

  >>> row_colors(["gradprom", "joint"])
  {'gradprom': '#1f77b4', 'joint': '#ff7f0e'}
  """
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  shades = (*colormaps["tab10"].colors, *colormaps["tab20"].colors[1::2])
  palette = [mcolors.to_hex(c) for c in shades]
  palette = [c for c in palette if len(set(mcolors.to_rgb(c))) > 1]   # Drop the greys.
  extra = max(0, len(names) - len(palette))
  palette += [mcolors.to_hex(mcolors.hsv_to_rgb((i / extra, 0.8, 0.7))) for i in range(extra)]
  return {name: palette[i] for i, name in enumerate(names)}


def legend_outside(axes) -> None:
  """The legend to the right of ``axes``, where it cannot hide a curve (saved with the figure)."""
  axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)


def _new_figure(width: float = 6.4, height: float = 4.2, **subplots: Any):
  figure = Figure(figsize=(width, height), dpi=DPI)
  FigureCanvasAgg(figure)
  return figure, figure.subplots(**subplots)


def _reference_line(axes, value: float | None, linestyle: str, label: str, color: str) -> None:
  if value is not None and np.isfinite(value):
    axes.axhline(value, color=color, linestyle=linestyle, label=label)


def _finish(figure: Figure, axes, path: Path, **labels: Any) -> str:
  """Labels, grid and legend on ``axes``, then saves ``figure`` to ``path``."""
  axes.set(**labels)
  axes.grid(alpha=0.3)
  legend_outside(axes)
  return _save(figure, path)


def _save(figure: Figure, path: Path) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.tight_layout()
  figure.savefig(path, dpi=DPI, bbox_inches="tight")   # Keeps the legend outside the axes.
  return str(path)


def file_label(key: str) -> str:
  """A metric key as part of a file name: a multi-task key's ``/<task>`` becomes ``_<task>``.

  >>> file_label("dice/segmentation"), file_label("psnr")
  ('dice_segmentation', 'psnr')
  """
  return key.replace("/", "_")


def task_suffixes(records: Sequence[Mapping[str, Any]], key: str) -> list[str]:
  """The suffixes under which ``key`` is logged: ``[""]`` for a single task's plain key, else each
  task's ``"/<task>"`` (``cosine/segmentation``), sorted; ``[]`` when it is not logged.

  >>> task_suffixes([{"cosine/b": 0.1, "cosine/a": 0.2, "gate/a": 1}], "cosine")
  ['/a', '/b']
  """
  keys = {k for r in records for k in r}
  if key in keys:
    return [""]
  return sorted(k[len(key):] for k in keys if k.startswith(f"{key}/"))


def series(records: Sequence[Mapping[str, Any]], key: str, kind: str) -> tuple[np.ndarray,
                                                                            np.ndarray]:
  """(steps, values) of ``key`` in the records of ``kind``, in step order.

  >>> series([{"step": 4, "kind": "val", "psnr": 2.0}, {"step": 2, "kind": "val", "psnr": 1.0},
  ...         {"step": 2, "kind": "train", "loss": 0.1}], "psnr", "val")
  (array([2, 4]), array([1., 2.]))
  """
  pairs = sorted((int(r["step"]), float(r[key])) for r in records
                 if r.get("kind") == kind and key in r)
  steps = np.asarray([s for s, _ in pairs], np.int64)
  return steps, np.asarray([v for _, v in pairs], np.float64)


def mean_curve(curves: Sequence[tuple[np.ndarray, np.ndarray]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(steps, mean, std) over seeds at the steps every curve has (seeds of a row log alike).

  >>> steps, mean, std = mean_curve([(np.array([1, 2]), np.array([1., 3.])),
  ...                                (np.array([1, 2, 3]), np.array([3., 5., 9.]))])
  >>> steps.tolist(), mean.tolist(), std.tolist()
  ([1, 2], [2.0, 4.0], [1.0, 1.0])
  """
  common = set(curves[0][0].tolist())
  for steps, _ in curves[1:]:
    common &= set(steps.tolist())
  steps = np.asarray(sorted(common), np.int64)
  stacked = np.stack([values[np.searchsorted(s, steps)] for s, values in curves])
  return steps, stacked.mean(axis=0), stacked.std(axis=0)


def plot_metric_curves(path: Path, curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
                       metric: str, colors: Mapping[str, str],
                       reference: float | None = None) -> str | None:
  """Validation ``metric`` vs step per row (mean over seeds, ±std band); None if nothing logged."""
  curves = {name: [c for c in row_curves if c[0].size] for name, row_curves in curves.items()}
  curves = {name: row_curves for name, row_curves in curves.items() if row_curves}
  if not curves:
    return None
  figure, axes = _new_figure()
  for name, row_curves in curves.items():
    steps, mean, std = mean_curve(row_curves)
    axes.plot(steps, mean, marker="o", markersize=3, color=colors[name],
              label=f"{name} ({len(row_curves)} seeds)")
    axes.fill_between(steps, mean - std, mean + std, color=colors[name], alpha=0.2, linewidth=0)
  _reference_line(axes, reference, "--", "no enhancement", REFERENCE_COLORS["no_enhancement"])
  return _finish(figure, axes, path, xlabel="training step", ylabel=f"validation {metric}",
                 title=f"Validation {metric} (mean ± std over seeds)")


def plot_final_scatter(path: Path, points: Mapping[str, Sequence[tuple[float, float]]],
                       task_metric: str, colors: Mapping[str, str],
                       no_enhancement: Sequence[tuple[float, float]] = (),
                       hq_input_task: float | None = None) -> str:
  """Test PSNR (x) vs ``task_metric`` (y), one point per run, references in grey."""
  figure, axes = _new_figure()
  for name, row_points in points.items():
    if row_points:
      x, y = zip(*row_points)
      axes.scatter(x, y, color=colors[name], label=name, s=30)
  if no_enhancement:
    x, y = zip(*no_enhancement)
    axes.scatter(x, y, color=REFERENCE_COLORS["no_enhancement"], marker="x",
                 label="no enhancement (each run)")
  _reference_line(axes, hq_input_task, ":", "high-quality input, same recogniser (mean)",
                  REFERENCE_COLORS["hq_input"])
  return _finish(figure, axes, path, xlabel="test PSNR (dB)", ylabel=f"test {task_metric}",
                 title=f"Final PSNR vs {task_metric}, one point per run")


def plot_cosine_histogram(path: Path, cosines: Sequence[float], row: str, *, num_seeds: int,
                          log_every: int | None, num_steps: int | None, threshold: float,
                          color: str) -> str:
  """Histogram of every logged cos(g_enh, g_task) of a row; the title says what they sample."""
  cosines = np.asarray(cosines, np.float64)
  figure, axes = _new_figure()
  axes.hist(cosines, bins=np.linspace(-1, 1, 41), color=color, alpha=0.8)
  axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
  sampled = (f"logged every {log_every} of {num_steps} steps" if log_every and num_steps
             else "logged steps")
  open_fraction = float(np.mean(cosines > threshold)) if cosines.size else float("nan")
  axes.set(xlabel="cos(g_enh, g_task)", ylabel="logged steps",
           title=f"{row}: {cosines.size} cosines ({sampled}, {num_seeds} seeds); "
                 f"{open_fraction:.0%} > threshold")
  axes.title.set_fontsize("small")
  legend_outside(axes)
  return _save(figure, path)


def plot_gate(path: Path, per_seed: Mapping[int, Sequence[Mapping[str, Any]]], row: str,
              suffix: str = "") -> str:
  """Cumulative gate-open rate (top) and the gate at each logged step (bottom), per seed; a
  multi-task run's task by its key ``suffix`` (``"/segmentation"``)."""
  figure, (rate_axes, gate_axes) = _new_figure(6.4, 5.6, nrows=2, sharex=True)
  for index, (seed, records) in enumerate(sorted(per_seed.items())):
    color = f"C{index}"
    steps, rate = series(records, f"gate_open_rate{suffix}", "train")
    rate_axes.plot(steps, rate, color=color, label=f"seed {seed}")
    steps, gate = series(records, f"gate{suffix}", "train")
    gate_axes.plot(steps, gate, color=color, marker=".", linestyle="none", alpha=0.6)
  task = f" of task {suffix[1:]}" if suffix else ""
  rate_axes.set(ylabel="gate-open rate (cumulative)", ylim=(-0.05, 1.05),
                title=f"{row}: how often the task gradient{task} was promoted")
  gate_axes.set(xlabel="training step", ylabel="gate at logged step", ylim=(-0.05, 1.05))
  for axes in (rate_axes, gate_axes):
    axes.grid(alpha=0.3)
  legend_outside(rate_axes)
  return _save(figure, path)


def example_strips(path: str | os.PathLike[str]) -> list[np.ndarray]:
  """A samples.png cut into its examples (one strip of panels per example), as RGB arrays."""
  with Image.open(path) as image:
    count = image.text.get(visualization.EXAMPLES_KEY) if hasattr(image, "text") else None
    pixels = np.asarray(image.convert("RGB"))
  # Grids written before the count was stored have square panels of the default size.
  count = int(count) if count else max(1, round(pixels.shape[0] / visualization.PANEL_PIXELS))
  bounds = np.linspace(0, pixels.shape[0], count + 1).round().astype(int)
  return [pixels[top:bottom] for top, bottom in zip(bounds[:-1], bounds[1:])]


def plot_sample_grids(path: Path, grids: Mapping[str, str | os.PathLike[str]], *,
                      max_side: int = MAX_SIDE, gap: int = 8) -> str | None:
  """Rows x examples: each row's first examples side by side under its name; None if none.

  As many examples as fit in ``max_side`` pixels across (at least one); the whole picture is then
  scaled down if the rows are still more than ``max_side`` pixels tall.
  """
  strips = {name: example_strips(p) for name, p in grids.items()}
  if not strips:
    return None
  strip_width = max(s.shape[1] for row in strips.values() for s in row)
  count = max(1, min(min(len(row) for row in strips.values()),
                     (max_side + gap) // (strip_width + gap)))
  images = {}
  for name, row in strips.items():
    height = max(s.shape[0] for s in row[:count])
    pieces = []
    for strip in row[:count]:
      strip = np.pad(strip, ((0, height - strip.shape[0]), (0, 0), (0, 0)), constant_values=255)
      pieces += [strip, np.full((height, gap, 3), 255, np.uint8)]
    images[name] = np.concatenate(pieces[:-1], axis=1)
  title = 22   # Pixels above each row for its name.
  width = max(image.shape[1] for image in images.values())
  height = sum(image.shape[0] + title for image in images.values())
  shrink = min(1.0, max_side / width, max_side / height)
  figure = Figure(figsize=(width * shrink / DPI, height * shrink / DPI), dpi=DPI)
  FigureCanvasAgg(figure)
  top = height
  for name, image in images.items():
    top -= title + image.shape[0]
    axes = figure.add_axes((0, top / height, image.shape[1] / width, image.shape[0] / height))
    axes.imshow(image, interpolation="antialiased", aspect="auto")
    axes.set_title(f"{name}: first {count} test examples", fontsize="small", loc="left")
    axes.axis("off")
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(path, dpi=DPI)
  return str(path)


def write_comparison_plots(directory: str | os.PathLike[str], *, rows: Sequence[Any],
                           results: Mapping[Any, Mapping[str, Any]],
                           records: Mapping[Any, Sequence[Mapping[str, Any]]], task_metric: str,
                           thresholds: Mapping[str, float],
                           samples: Mapping[str, Sequence[Path]]) -> list[str]:
  """Every plot of a comparison into ``directory``; returns the paths written.

  Args:
    rows: the comparison's rows (`experiments.tools.comparison.Row`: ``name``, ``method``).
    results: run -> its results.json (runs have ``row`` and ``seed``).
    records: run -> its metrics.jsonl records.
    task_metric: the recognition metric of the curves and the scatter plot.
    thresholds: gradprom row name -> its gate threshold.
    samples: row name -> candidate samples.png paths (the first that exists is drawn).
  """
  directory = Path(directory)
  colors = row_colors([row.name for row in rows])
  written = []
  for metric in ("psnr", task_metric):
    curves = {row.name: [series(r, metric, "val") for run, r in records.items() if run.row == row]
              for row in rows}
    last_reference = [series(r, f"no_enhancement_{metric}", "val")[1][-1:] for r in records.values()]
    reference = np.concatenate(last_reference) if last_reference else np.zeros(0)
    written.append(plot_metric_curves(
        directory / f"val_{file_label(metric)}.png", curves, metric, colors,
        reference=float(reference.mean()) if metric == "psnr" and reference.size else None))

  points = {row.name: [(r["psnr"], r[task_metric]) for run, r in results.items()
                       if run.row == row and "psnr" in r and task_metric in r] for row in rows}
  if any(points.values()):
    no_enhancement = [(r["no_enhancement_psnr"], r[f"no_enhancement_{task_metric}"])
                      for r in results.values()
                      if "no_enhancement_psnr" in r and f"no_enhancement_{task_metric}" in r]
    hq_input = [r[f"hq_input_{task_metric}"] for r in results.values()
                if f"hq_input_{task_metric}" in r]
    written.append(plot_final_scatter(
        directory / f"final_psnr_vs_{file_label(task_metric)}.png", points, task_metric, colors,
        no_enhancement=no_enhancement,
        hq_input_task=float(np.nanmean(hq_input)) if hq_input else None))

  for row in rows:
    if row.method != "gradprom":
      continue
    row_records = {run.seed: r for run, r in records.items() if run.row == row}
    num_steps = {int(result["num_train_steps"]) for run, result in results.items()
                 if run.row == row}
    # One histogram and gate plot per task (a single task's keys have no suffix).
    for suffix in task_suffixes([r for log in row_records.values() for r in log], "cosine"):
      key = f"cosine{suffix}"
      cosines = [c for r in row_records.values() for c in series(r, key, "train")[1]]
      if not cosines:
        continue
      steps = [series(r, key, "train")[0] for r in row_records.values()]
      gaps = np.concatenate([np.diff(s) for s in steps if s.size > 1] or [np.zeros(0)])
      label = f"{row.name}{file_label(suffix)}"
      written.append(plot_cosine_histogram(
          directory / f"cosine_hist_{label}.png", cosines, f"{row.name}{suffix}",
          num_seeds=len(row_records), log_every=int(np.median(gaps)) if gaps.size else None,
          num_steps=min(num_steps) if len(num_steps) == 1 else None,
          threshold=float(thresholds.get(row.name, 0.0)), color=colors[row.name]))
      written.append(plot_gate(directory / f"gate_{label}.png", row_records, row.name, suffix))

  grids = {}
  for row in rows:
    existing = [p for p in samples.get(row.name, ()) if Path(p).exists()]
    if existing:
      grids[f"{row.name} ({Path(existing[0]).parent.name})"] = existing[0]
  written.append(plot_sample_grids(directory / "samples_by_row.png", grids))
  return [p for p in written if p is not None]
