r"""The statistics of a seed-paired method comparison: λ chosen on validation, paired differences with
confidence intervals and a multiple-comparison correction, and verdicts on the paper's claims.

Works on a comparison directory of `experiments/compare.py` (``DIR/<row>/seed_<s>/`` holding each
run's ``results.json`` and ``metrics.jsonl``). Rows of a λ sweep are named ``<method>_l<λ>``
(``gradprom_l0.1``, ``joint_l1``); controls keep their own names (``enhance_only``). The rules
implemented here are the ones fixed in ``results/pretrained_recognizer/PROTOCOL.md``:

* :func:`choose_lambda` picks a method's λ from its runs' **final validation** records only;
* :func:`paired_difference` compares two rows seed by seed (same seed = same pre-trained recogniser,
  data order and evaluation degradations): mean difference, t confidence interval, paired t-test;
* :func:`holm` adjusts the p-values of every comparison of a setting (family-wise α);
* :func:`verdict` turns an interval into "holds" / "does not hold" / "undecided" with a margin.

>>> diff = paired_difference({0: 25.0, 1: 25.5, 2: 24.8}, {0: 24.0, 1: 24.6, 2: 24.0})
>>> round(diff.mean, 3), diff.n, verdict(diff.low, diff.high, margin=0.1)
(0.9, 3, 'better')
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from gradprom_jax.training.metric_logging import METRICS_FILENAME, read_metrics

RESULTS_FILENAME = "results.json"
_LAMBDA_ROW = re.compile(r"^(?P<method>.+)_l(?P<weight>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)$")


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished run: its test results and its metrics.jsonl records."""
  row: str
  seed: int
  results: Mapping[str, Any]
  records: Sequence[Mapping[str, Any]]

  def final_validation(self) -> dict[str, float]:
    """The validation record of the run's last step (empty if the run logged none)."""
    validation = [r for r in self.records if r.get("kind") == "val"]
    return dict(max(validation, key=lambda r: r["step"])) if validation else {}

  def train_series(self, key: str) -> list[float]:
    return [float(r[key]) for r in self.records if r.get("kind") == "train" and key in r]


def load_runs(directory: str | Path) -> dict[tuple[str, int], Run]:
  """Every finished run (one with a results.json) under ``directory/<row>/seed_<s>/``."""
  runs = {}
  for results_path in sorted(Path(directory).glob(f"*/seed_*/{RESULTS_FILENAME}")):
    run_dir = results_path.parent
    row, seed = run_dir.parent.name, int(run_dir.name.removeprefix("seed_"))
    records = read_run_records(run_dir)
    runs[row, seed] = Run(row, seed, json.loads(results_path.read_text()), records)
  return runs


def read_run_records(run_dir: str | Path) -> list[dict[str, Any]]:
  """A run's metrics.jsonl records, or those of its gzip-compressed copy (as committed in results/)."""
  run_dir = Path(run_dir)
  if (run_dir / METRICS_FILENAME).exists():
    return read_metrics(run_dir / METRICS_FILENAME)
  compressed = run_dir / f"{METRICS_FILENAME}.gz"
  if not compressed.exists():
    return []
  with gzip.open(compressed, "rt", encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def collect(workdir: str | Path, destination: str | Path) -> int:
  """Copies each finished run's results.json, run.json, config.json and gzip-compressed metrics.jsonl
  from a comparison ``workdir`` to ``destination/<row>/seed_<s>/`` (what results/ commits); returns
  the number of runs copied."""
  count = 0
  for results_path in sorted(Path(workdir).glob(f"*/seed_*/{RESULTS_FILENAME}")):
    source = results_path.parent
    target = Path(destination) / source.parent.name / source.name
    target.mkdir(parents=True, exist_ok=True)
    for name in (RESULTS_FILENAME, "run.json", "config.json"):
      if (source / name).exists():
        (target / name).write_bytes((source / name).read_bytes())
    if (source / METRICS_FILENAME).exists():
      # mtime=0: the same metrics give the same bytes, so re-collecting changes nothing in git.
      (target / f"{METRICS_FILENAME}.gz").write_bytes(
          gzip.compress((source / METRICS_FILENAME).read_bytes(), mtime=0))
    count += 1
  return count


def lambda_row(row: str) -> tuple[str, float] | None:
  """``"gradprom_l0.1"`` -> ``("gradprom", 0.1)``; None for a row without a λ suffix.

  >>> lambda_row("gp_norm_l0.03"), lambda_row("enhance_only")
  (('gp_norm', 0.03), None)
  """
  match = _LAMBDA_ROW.match(row)
  return None if match is None else (match["method"], float(match["weight"]))


def choose_lambda(validation: Mapping[float, Mapping[str, float]], *, reference_psnr: float,
                  task_metric: str, psnr_drop: float = 1.0, tie: float = 0.002) -> float:
  """A method's λ from its final validation metrics per λ (the protocol's rule).

  Admissible λ keep validation PSNR ≥ ``reference_psnr - psnr_drop`` (the reference is
  enhancement-only's); among them the highest ``task_metric`` wins, differences below ``tie`` broken
  by the higher PSNR; with none admissible, the λ of highest PSNR.

  >>> val = {0.1: {"psnr": 25.0, "auc": 0.90}, 1.0: {"psnr": 23.0, "auc": 0.95},
  ...        0.3: {"psnr": 24.9, "auc": 0.901}}
  >>> choose_lambda(val, reference_psnr=25.5, task_metric="auc")
  0.1
  >>> choose_lambda(val, reference_psnr=30.0, task_metric="auc")
  0.1
  """
  if not validation:
    raise ValueError("No λ has a validation record.")
  admissible = {w: m for w, m in validation.items() if m["psnr"] >= reference_psnr - psnr_drop}
  if not admissible:
    return max(validation, key=lambda w: validation[w]["psnr"])
  best_task = max(m[task_metric] for m in admissible.values())
  near_best = {w: m for w, m in admissible.items() if m[task_metric] >= best_task - tie}
  return max(near_best, key=lambda w: near_best[w]["psnr"])


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """Mean of per-seed differences a − b with a t confidence interval and the paired t-test's p."""
  n: int
  mean: float
  low: float
  high: float
  p_value: float
  confidence: float

  def format(self, digits: int = 3) -> str:
    return (f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] "
            f"(n={self.n}, p={self.p_value:.3g})")


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference:
  """Seed-paired difference of two rows' values (only seeds present in both, finite in both).

  >>> d = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0})
  >>> d.mean, d.low, d.high, d.p_value
  (0.0, 0.0, 0.0, 1.0)
  """
  seeds = sorted(s for s in set(a) & set(b) if math.isfinite(a[s]) and math.isfinite(b[s]))
  diffs = np.array([a[s] - b[s] for s in seeds], np.float64)
  n = len(diffs)
  if n < 2:
    return PairedDifference(n, float(diffs.mean()) if n else math.nan, -math.inf, math.inf,
                            math.nan, confidence)
  mean, std = float(diffs.mean()), float(diffs.std(ddof=1))
  if std == 0.0:   # identical differences: the interval is a point, the test is degenerate
    return PairedDifference(n, mean, mean, mean, 1.0 if mean == 0 else 0.0, confidence)
  half = stats.t.ppf(0.5 + confidence / 2, df=n - 1) * std / math.sqrt(n)
  p_value = float(stats.ttest_rel(diffs, np.zeros(n)).pvalue)
  return PairedDifference(n, mean, mean - half, mean + half, p_value, confidence)


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm's step-down adjusted p-values (family-wise error control for many comparisons).

  >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03])]
  [0.03, 0.06, 0.06]
  """
  order = sorted(range(len(p_values)), key=lambda i: p_values[i])
  adjusted, running = [0.0] * len(p_values), 0.0
  for rank, index in enumerate(order):
    p = p_values[index]
    value = 1.0 if math.isnan(p) else min(1.0, (len(p_values) - rank) * p)
    running = max(running, value)
    adjusted[index] = running
  return adjusted


def verdict(low: float, high: float, margin: float) -> str:
  """A non-inferiority reading of an interval for a − b: "better" (low > 0), "holds"
  (low > −margin), "does not hold" (high < −margin), else "undecided".

  >>> verdict(0.2, 0.5, 0.1), verdict(-0.05, 0.3, 0.1), verdict(-2.0, -0.5, 0.1), verdict(-1, 1, 0.1)
  ('better', 'holds', 'does not hold', 'undecided')
  """
  if low > 0:
    return "better"
  if low > -margin:
    return "holds"
  if high < -margin:
    return "does not hold"
  return "undecided"


def values(runs: Mapping[tuple[str, int], Run], row: str, metric: str) -> dict[int, float]:
  """``{seed: results[metric]}`` of a row's finished runs (NaN where the metric is missing)."""
  return {seed: float(run.results.get(metric, math.nan))
          for (name, seed), run in runs.items() if name == row}


def halves_agreement(run: Run) -> tuple[float, int]:
  """The fraction of gate-reliability probes whose two half-batch cosines agree in sign, and their
  number (``gate_probe/halves_agree`` in the train records)."""
  agree = run.train_series("gate_probe/halves_agree")
  return (float(np.mean(agree)) if agree else math.nan), len(agree)


def coin_flip_p_value(agreeing: int, probes: int) -> float:
  """Exact two-sided binomial p-value of ``agreeing`` of ``probes`` sign agreements against a coin
  flip (0.5): how surprising the agreement would be if the gate's cosine sign were noise.

  >>> round(coin_flip_p_value(15, 30), 3), round(coin_flip_p_value(23, 30), 4)
  (1.0, 0.0052)
  """
  return float(stats.binomtest(agreeing, probes, 0.5).pvalue)
