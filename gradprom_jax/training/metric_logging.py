"""Training metrics to `metrics.jsonl`, TensorBoard (via tensorboardX, no TensorFlow) and a progress bar.

One `MetricLogger` per run, enabled on process 0 only (the others get a no-op logger, so the loop
calls it unconditionally). Every `log_train`/`log_eval` call appends one JSON object with
``"step"``, ``"kind"`` (``"train"`` or the eval prefix), ``"time"`` (Unix seconds) and the metrics
as floats. On resume from step s, records after s (written after the checkpoint the run
resumes from) are dropped from `metrics.jsonl` and TensorBoard's ``purge_step`` does the same, so
both show one clean curve; records of the ``replace_kinds`` (the test scores, written afresh at the
end of every start) are dropped whatever their step.

The bar moves at every dispatched step (:meth:`MetricLogger.advance`, no host sync) and shows the
latest losses from the log steps. :class:`OneLogStepBehind` lets the loop read a log step's device
values only at the next log step, when they are long computed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorboardX
import tqdm

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"


def to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Scalar jax/numpy/Python values -> Python floats; anything else is an error naming the key.

  >>> to_floats({"loss": np.float32(0.5), "acc": 1})
  {'loss': 0.5, 'acc': 1.0}
  """
  floats = {}
  for name, value in metrics.items():
    array = np.asarray(value)
    if array.size != 1:
      raise ValueError(f"Metric {name!r} must be a scalar, got shape {array.shape}")
    floats[name] = float(array.reshape(()))
  return floats


class MetricLogger:
  """Writes metrics to ``workdir/metrics.jsonl``, ``workdir/tensorboard`` and a tqdm bar.

  Args:
    workdir: the run's directory.
    total_steps: the run length, for the bar's ETA.
    start_step: the step the run resumes from (0 for a fresh run).
    enabled: whether this process logs; None means process 0 only.
    show_progress: whether to draw the bar (and print evaluation lines) on stderr.
    replace_kinds: kinds of records (e.g. ``("test",)``) this run writes afresh: earlier ones are
      dropped from ``metrics.jsonl`` at the start.

  >>> import tempfile
  >>> with MetricLogger(tempfile.mkdtemp(), total_steps=10, show_progress=False) as logger:
  ...   logger.log_train(1, {"loss": np.float32(0.25)})
  ...   logger.log_eval(1, {"psnr": 30.0})
  ...   lines = logger.metrics_path.read_text().splitlines()
  >>> [json.loads(line)["kind"] for line in lines]
  ['train', 'val']
  """

  def __init__(self, workdir: str | os.PathLike[str], *, total_steps: int, start_step: int = 0,
               enabled: bool | None = None, show_progress: bool = True,
               replace_kinds: tuple[str, ...] = ()):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.metrics_path = Path(workdir) / METRICS_FILENAME
    self._writer = None
    self._bar = None
    self._file = None
    if not self.enabled:
      return
    self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
    _drop_records_after(self.metrics_path, start_step, kinds=replace_kinds)
    self._file = open(self.metrics_path, "a", encoding="utf-8")
    self._writer = tensorboardX.SummaryWriter(
        str(Path(workdir) / TENSORBOARD_DIRNAME), purge_step=start_step or None, flush_secs=30)
    self._bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not show_progress,
                          desc="train", unit="step", dynamic_ncols=True, smoothing=0.1)
    self._latest: dict[str, float] = {}

  def log_train(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Records training metrics at `step` and advances the progress bar to it."""
    if not self.enabled:
      return
    floats = self._record(step, "train", metrics, prefix="train")
    self._latest.update({k: v for k, v in floats.items() if "loss" in k} or floats)
    self._bar.set_postfix({k: f"{v:.4g}" for k, v in self._latest.items()}, refresh=False)
    self._bar.update(max(0, int(step) - self._bar.n))

  def advance(self, step: int) -> None:
    """Moves the bar to ``step`` without recording anything (call it for every dispatched step)."""
    if self.enabled:
      self._bar.update(max(0, int(step) - self._bar.n))

  def write(self, text: str) -> None:
    """Prints a line on stdout above the bar (unless the bar is hidden or this process is silent)."""
    if self.enabled and not self._bar.disable:
      self._bar.write(text)

  def log_eval(self, step: int, metrics: Mapping[str, Any], prefix: str = "val") -> None:
    """Records evaluation metrics at `step` under `prefix` (e.g. "val", "test")."""
    if not self.enabled:
      return
    floats = self._record(step, prefix, metrics, prefix=prefix)
    if not self._bar.disable:
      self._bar.write(f"step {int(step)} {prefix}: "
                      + ", ".join(f"{k}={v:.4g}" for k, v in floats.items()))

  def _record(self, step: int, kind: str, metrics: Mapping[str, Any], *, prefix: str
              ) -> dict[str, float]:
    floats = to_floats(metrics)
    for reserved in ("step", "kind", "time"):
      if reserved in floats:
        raise ValueError(f"Metric name {reserved!r} is reserved in {METRICS_FILENAME}")
    record = {"step": int(step), "kind": kind, "time": time.time(), **floats}
    # NaN/inf are written as the NaN/Infinity tokens Python's json reads back: a diverged run
    # should show as such, not crash the logger.
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for name, value in floats.items():
      self._writer.add_scalar(f"{prefix}/{name}", value, global_step=int(step))
    return floats

  def close(self) -> None:
    """Flushes and closes the file, the event writer and the bar."""
    if self._file is not None:
      self._file.close()
      self._writer.close()
      self._bar.close()
      self._file = None

  def __enter__(self) -> MetricLogger:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class OneLogStepBehind:
  """Holds the latest log step's values (still on the device) until the next log step comes.

  Reading a step's metrics on the host waits for that step; the step just dispatched has barely
  started, but the previous log step's is long done. So each :meth:`put` hands the *previous*
  step's values to ``record(step, values)`` and keeps its own; :meth:`flush` hands over the held
  one (at the end of a run, or before it stops).

  >>> written = []
  >>> log = OneLogStepBehind(lambda step, values: written.append((step, values)))
  >>> log.put(10, "a"); written
  []
  >>> log.put(20, "b"); written
  [(10, 'a')]
  >>> log.flush(); log.flush(); written
  [(10, 'a'), (20, 'b')]
  """

  def __init__(self, record: Callable[[int, Any], None]):
    self._record = record
    self._held: tuple[int, Any] | None = None

  def put(self, step: int, values: Any) -> None:
    """Records the held step's values, then holds ``values`` of ``step``."""
    self.flush()
    self._held = (step, values)

  def flush(self) -> None:
    """Records the held step's values, if any."""
    held, self._held = self._held, None
    if held is not None:
      self._record(*held)


def read_metrics(path: str | os.PathLike[str], kind: str | None = None) -> list[dict[str, Any]]:
  """The records of a `metrics.jsonl`, optionally only those of one kind.

  >>> import tempfile
  >>> workdir = tempfile.mkdtemp()
  >>> with MetricLogger(workdir, total_steps=2, show_progress=False) as logger:
  ...   logger.log_train(2, {"loss": 1.0})
  >>> [r["loss"] for r in read_metrics(Path(workdir) / METRICS_FILENAME, kind="train")]
  [1.0]
  """
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        if kind is None or record["kind"] == kind:
          records.append(record)
  return records


def _drop_records_after(path: Path, step: int, kinds: tuple[str, ...] = ()) -> None:
  """Rewrites `path` without records past `step`, of `kinds`, or a half-written last line."""
  if not path.exists():
    return
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
        if record["step"] <= step and record["kind"] not in kinds:
          kept.append(line if line.endswith("\n") else line + "\n")
      except (json.JSONDecodeError, KeyError, TypeError):
        continue  # A line cut short by a kill; nothing to keep.
  temporary = path.with_name(path.name + ".tmp")
  temporary.write_text("".join(kept), encoding="utf-8")
  os.replace(temporary, path)
