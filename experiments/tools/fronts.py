r"""Methods compared on their quality–task fronts over λ, seed by seed, at matched task gradient.

A method run over a λ grid traces, per seed, a front of (PSNR, task metric) points; the
enhancement-only run of the same seed is its λ → 0 end. Methods are compared where their fronts can
be compared fairly, never at one λ each:

* **the front** (:class:`SeedFront`): the points in order of λ, enhancement-only first, joined by
  straight segments (piecewise linear in log λ in both coordinates is a straight segment in the
  plane), then made monotone by a running maximum: the front's task metric at PSNR ``p`` is the best
  task metric anywhere on the polyline with PSNR ≥ ``p``, and its PSNR at task metric ``t`` the best
  PSNR anywhere with task metric ≥ ``t``. Neither is extrapolated: a task gain the polyline never
  attains is *not reached* (NaN);
* **matched readings**: the task metric at a PSNR loss below the same seed's enhancement-only, the
  PSNR at a task gain over it, and the **hypervolume** of the measured points against the reference
  point (enhancement-only PSNR − :data:`HYPERVOLUME_PSNR_WIDTH` dB, enhancement-only task metric);
* each reading is differenced seed by seed (reference method − other,
  :func:`evidence.paired_difference`), Holm-adjusted over every comparison of the setting
  (:func:`holm_family`, duplicates dropped), and across settings for a claim spanning several
  (:func:`holm_across_settings`, :func:`compare_across_settings`);
* the setting's **headroom** (judge on high-quality images − judge on enhancement-only's output) and
  the gate's one-sided **reliability** (:func:`gate_reliability`).

>>> a = SeedFront.from_points(origin=(25.0, 0.80), points={0.1: (24.5, 0.85), 1.0: (23.0, 0.90)})
>>> round(a.task_at_psnr_loss(0.25), 3), round(a.psnr_at_task_gain(0.075), 3)
(0.825, 23.75)
>>> a.psnr_at_task_gain(0.2)   # never attained: not reached
nan
>>> round(hypervolume([(25.0, 0.80), (24.5, 0.85), (23.0, 0.90)], reference=(24.0, 0.80)), 3)
0.025
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

from experiments.tools import evidence

ENHANCE_ONLY = "enhance_only"
REFERENCE_METHOD = "gradprom"
PSNR_LOSSES = (0.1, 0.25, 0.5, 1.0)
# The reference point's PSNR sits this far below enhancement-only's: the area counts the task metric
# a method gains within the protocol's admissible 1 dB.
HYPERVOLUME_PSNR_WIDTH = 1.0
CANNOT_DECIDE = "cannot decide (headroom below margin)"

# Non-inferiority margins (PROTOCOL.md); the hypervolume's is the task margin over the 1 dB box.
MARGINS = {"psnr": 0.1, "ssim": 0.005}
TASK_MARGIN = 0.01
HYPERVOLUME_MARGIN = TASK_MARGIN * HYPERVOLUME_PSNR_WIDTH
TASK_AT_PSNR_LOSS = "task_at_psnr_loss"
PSNR_AT_TASK_GAIN = "psnr_at_task_gain"
HYPERVOLUME = "hypervolume"


def margin(metric: str) -> float:
  """The protocol's non-inferiority margin of a metric (``judge_`` prefixes read the same).

  >>> margin("psnr"), margin("judge_ssim"), margin("balanced_accuracy")
  (0.1, 0.005, 0.01)
  """
  return MARGINS.get(metric.removeprefix("judge_"), TASK_MARGIN)


def _best_along(x: np.ndarray, y: np.ndarray, floor: float) -> float:
  """The largest ``y`` on the polyline through ``(x, y)`` where ``x ≥ floor``; NaN where none is.

  A linear function's maximum on a segment is at an end, so the candidates are the vertices with
  ``x ≥ floor`` and the points where a segment crosses ``x = floor``.
  """
  candidates = list(y[x >= floor])
  for x0, x1, y0, y1 in zip(x[:-1], x[1:], y[:-1], y[1:]):
    if (x0 - floor) * (x1 - floor) < 0:
      candidates.append(y0 + (floor - x0) / (x1 - x0) * (y1 - y0))
  return float(max(candidates)) if candidates else math.nan


@dataclasses.dataclass(frozen=True)
class SeedFront:
  """One method's front at one seed: (PSNR, task) in order of λ, enhancement-only (λ → 0) first."""
  psnr: np.ndarray
  task: np.ndarray
  weights: tuple[float, ...]

  @classmethod
  def from_points(cls, origin: tuple[float, float],
                  points: Mapping[float, tuple[float, float]]) -> SeedFront:
    """``origin``: enhancement-only's (PSNR, task) of the seed; ``points``: ``{λ: (PSNR, task)}``
    (non-finite points are left out)."""
    weights = tuple(w for w in sorted(points) if all(map(math.isfinite, points[w])))
    coordinates = np.array([origin] + [points[w] for w in weights], np.float64)
    return cls(coordinates[:, 0], coordinates[:, 1], (0.0,) + weights)

  def task_at_psnr_loss(self, loss: float) -> float:
    """The best task metric with PSNR at most ``loss`` dB below enhancement-only's (always reached:
    enhancement-only itself has no loss)."""
    return _best_along(self.psnr, self.task, self.psnr[0] - loss)

  def psnr_at_task_gain(self, gain: float) -> float:
    """The best PSNR with task metric at least ``gain`` above enhancement-only's; NaN (not reached)
    where the front never gains that much."""
    return _best_along(self.task, self.psnr, self.task[0] + gain)

  def hypervolume(self) -> float:
    """The area of the measured points against (enhancement-only PSNR − 1 dB, its task metric)."""
    reference = (self.psnr[0] - HYPERVOLUME_PSNR_WIDTH, self.task[0])
    return hypervolume(zip(self.psnr, self.task), reference)


def hypervolume(points: Iterable[tuple[float, float]], reference: tuple[float, float]) -> float:
  """The area dominated by ``points`` (both coordinates larger is better) and bounded below by
  ``reference``: the measured staircase, no interpolation between points.

  >>> hypervolume([(3.0, 1.0), (2.0, 2.0), (1.0, 3.0)], reference=(0.0, 0.0))
  6.0
  """
  area, level = 0.0, reference[1]
  # By PSNR, highest first: a point above the running task level adds the slab between the level
  # and its task metric, as wide as its PSNR above the reference.
  for psnr, task in sorted(points, key=lambda point: -point[0]):
    if psnr > reference[0] and task > level:
      area += (psnr - reference[0]) * (task - level)
      level = task
  return area


def one_sided_agreement_p_value(agreeing: int, probes: int) -> float:
  """Exact one-sided binomial p-value that the halves agree in sign more often than a coin flip.

  >>> round(one_sided_agreement_p_value(23, 30), 4), one_sided_agreement_p_value(10, 30) > 0.9
  (0.0026, True)
  """
  return float(stats.binomtest(agreeing, probes, 0.5, alternative="greater").pvalue)


def per_half_sign_accuracy(agreement: float) -> float:
  """The probability ``a`` that one half reads the cosine's sign right, if the halves read it
  independently: agreement = a² + (1 − a)², so a = (1 + √(2·agreement − 1)) / 2; agreement at or
  below a coin flip means a = 0.5.

  >>> round(per_half_sign_accuracy(0.56), 3), per_half_sign_accuracy(1.0)
  (0.673, 1.0)
  >>> per_half_sign_accuracy(0.4)
  0.5
  """
  return (1.0 + math.sqrt(max(2.0 * agreement - 1.0, 0.0))) / 2.0


@dataclasses.dataclass(frozen=True)
class GateReliability:
  """A row's half-batch sign agreement (pooled probes), one-sided test, per-half accuracy."""
  agreeing: int
  probes: int
  p_value: float
  accuracy: float
  accuracy_low: float
  accuracy_high: float

  @property
  def agreement(self) -> float:
    return self.agreeing / self.probes if self.probes else math.nan


def gate_reliability(agreeing: int, probes: int, confidence: float = 0.95) -> GateReliability:
  """The one-sided test and the per-half accuracy with its interval (the exact Clopper–Pearson
  interval of the agreement, mapped through :func:`per_half_sign_accuracy`, which is monotone).

  >>> g = gate_reliability(56, 100)
  >>> round(g.accuracy, 3), g.accuracy_low, round(g.p_value, 3)
  (0.673, 0.5, 0.136)
  """
  interval = stats.binomtest(agreeing, probes, 0.5).proportion_ci(confidence, method="exact")
  return GateReliability(agreeing, probes, one_sided_agreement_p_value(agreeing, probes),
                         per_half_sign_accuracy(agreeing / probes),
                         per_half_sign_accuracy(interval.low),
                         per_half_sign_accuracy(interval.high))


def holm_family(comparisons: Sequence[dict[str, Any]]) -> None:
  """Marks duplicates and adds ``holm_p`` to each comparison, in place: Holm over the family of the
  comparisons that are tests (a p-value: two or more seeds paired) and not duplicates. A comparison
  is a duplicate when its per-seed differences equal an earlier one's exactly (e.g. a row equal to
  enhancement-only on PSNR, or a front read at two losses where it is flat): it would count one test
  twice. Comparisons outside the family get ``holm_p`` NaN.

  >>> family = [{"name": "a", "differences": {0: 1.0, 1: 2.0}, "p_value": 0.01},
  ...           {"name": "b", "differences": {0: 1.0, 1: 2.0}, "p_value": 0.01},
  ...           {"name": "c", "differences": {0: 0.5}, "p_value": math.nan},
  ...           {"name": "d", "differences": {0: 0.5, 1: 0.0}, "p_value": 0.04}]
  >>> holm_family(family)
  >>> [(c["duplicate_of"], c["holm_p"]) for c in family]
  [(None, 0.02), ('a', nan), (None, nan), (None, 0.04)]
  """
  seen: dict[tuple, str] = {}
  for comparison in comparisons:
    key = tuple(sorted((s, round(d, 12)) for s, d in comparison["differences"].items()))
    comparison["duplicate_of"] = seen.get(key) if key else None
    seen.setdefault(key, comparison["name"])
  family = [c for c in comparisons if c["duplicate_of"] is None and math.isfinite(c["p_value"])]
  for comparison, adjusted in zip(family, evidence.holm([c["p_value"] for c in family])):
    comparison["holm_p"] = adjusted
  for comparison in comparisons:
    comparison.setdefault("holm_p", math.nan)


def holm_across_settings(
    p_values: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
  """Holm over the union of several settings' families, ``{setting: {comparison: p}}``: the
  correction for a claim that any of the settings may carry ("GradProm beats joint somewhere").

  >>> holm_across_settings({"a": {"x": 0.01}, "b": {"x": 0.04, "y": 0.03}})
  {'a': {'x': 0.03}, 'b': {'x': 0.06, 'y': 0.06}}
  """
  keys = [(setting, name) for setting, family in p_values.items() for name in family]
  adjusted = evidence.holm([p_values[s][n] for s, n in keys])
  out: dict[str, dict[str, float]] = {setting: {} for setting in p_values}
  for (setting, name), p in zip(keys, adjusted):
    out[setting][name] = round(p, 12)
  return out


def _values(values: Mapping[Any, float | None]) -> dict[int, float]:
  """A comparison's per-seed readings as compare_fronts made them (fronts.json stores seeds as
  strings and NaN as null)."""
  return {int(seed): math.nan if v is None else float(v) for seed, v in values.items()}


def _bonferroni_reading(comparison: Mapping[str, Any], reference_values: Mapping[int, float],
                        other_values: Mapping[int, float], headroom_of: Mapping[str, Any],
                        level: float) -> tuple[float, float, str]:
  """A comparison's paired interval at ``level`` and its verdict against the margin of its kind,
  or "cannot decide" where its setting's headroom on the metric is below that margin. Within a
  setting and across settings alike, so both read a comparison the same way."""
  wide = evidence.paired_difference(reference_values, other_values, confidence=level)
  room = headroom_of.get(comparison["metric"].removeprefix("judge_"))
  if room is not None and room["cannot_decide"]:
    return wide.low, wide.high, CANNOT_DECIDE
  allowed = {TASK_AT_PSNR_LOSS: margin(comparison["metric"]), PSNR_AT_TASK_GAIN: margin("psnr"),
             HYPERVOLUME: HYPERVOLUME_MARGIN}[comparison["kind"]]
  return wide.low, wide.high, evidence.verdict(wide.low, wide.high, allowed)


def compare_across_settings(settings: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """Several settings' front comparisons (:func:`compare_fronts` results or their fronts.json, by
  setting name) corrected as one family: the correction for a claim that spans the settings.

  Holm over the union of the settings' tests (:func:`holm_across_settings`); each test's Bonferroni
  interval at the union's level, with the same margins, and the same "cannot decide" where its
  setting's headroom is below the margin. Returns ``{"family_size", "bonferroni_level",
  "settings": {setting: [comparison, ...]}}`` where each comparison keeps its setting's fields and
  gains ``across_holm_p``, ``across_low``, ``across_high`` and ``across_verdict``.
  """
  tests = {name: [c for c in result["comparisons"]
                  if c.get("holm_p") is not None and math.isfinite(c["holm_p"])]
           for name, result in settings.items()}
  adjusted = holm_across_settings({name: {c["name"]: c["p_value"] for c in family}
                                   for name, family in tests.items()})
  size = sum(map(len, tests.values()))
  level = 1 - 0.05 / max(size, 1)
  out: dict[str, Any] = {"family_size": size, "bonferroni_level": level, "settings": {}}
  for name, family in tests.items():
    headroom_of = settings[name]["headroom"]
    rows = []
    for c in family:
      low, high, verdict = _bonferroni_reading(
          c, _values(c["reference_values"]), _values(c["other_values"]), headroom_of, level)
      rows.append({**c, "across_holm_p": adjusted[name][c["name"]], "across_low": low,
                   "across_high": high, "across_verdict": verdict})
    out["settings"][name] = rows
  return out


def method_fronts(runs: Mapping[tuple[str, int], evidence.Run],
                  metric: str) -> dict[str, dict[int, SeedFront]]:
  """``{method: {seed: SeedFront}}`` in (PSNR, ``metric``) of every ``<method>_l<λ>`` row, for the
  seeds whose enhancement-only run finished (it is the front's origin)."""
  def point(run: evidence.Run) -> tuple[float, float]:
    return float(run.results.get("psnr", math.nan)), float(run.results.get(metric, math.nan))

  origins = {seed: point(run) for (row, seed), run in runs.items() if row == ENHANCE_ONLY}
  points: dict[str, dict[int, dict[float, tuple[float, float]]]] = {}
  for (row, seed), run in runs.items():
    parsed = evidence.lambda_row(row)
    if parsed and seed in origins:
      points.setdefault(parsed[0], {}).setdefault(seed, {})[parsed[1]] = point(run)
  return {method: {seed: SeedFront.from_points(origins[seed], by_weight)
                   for seed, by_weight in sorted(by_seed.items())
                   if all(map(math.isfinite, origins[seed]))}
          for method, by_seed in sorted(points.items())}


def default_task_gains(fronts: Mapping[str, Mapping[int, SeedFront]]) -> list[float]:
  """¼, ½ and ¾ of the median (over methods and seeds) of a front's largest task gain over
  enhancement-only, to two significant digits; none where the fronts gain nothing.

  >>> front = SeedFront.from_points((25.0, 0.8), {1.0: (24.0, 0.84)})
  >>> default_task_gains({"m": {0: front}})
  [0.01, 0.02, 0.03]
  """
  largest = [float(f.task.max() - f.task[0])
             for by_seed in fronts.values() for f in by_seed.values()]
  median = float(np.median(largest)) if largest else 0.0
  if not median > 0:
    return []
  return [float(f"{fraction * median:.2g}") for fraction in (0.25, 0.5, 0.75)]


def _readings(fronts: Mapping[int, SeedFront], kind: str, level: float | None) -> dict[int, float]:
  if kind == TASK_AT_PSNR_LOSS:
    return {seed: f.task_at_psnr_loss(level) for seed, f in fronts.items()}
  if kind == PSNR_AT_TASK_GAIN:
    return {seed: f.psnr_at_task_gain(level) for seed, f in fronts.items()}
  return {seed: f.hypervolume() for seed, f in fronts.items()}


def _comparison(reference: str, other: str, metric: str, kind: str, level: float | None,
                fronts: Mapping[str, Mapping[int, SeedFront]]) -> dict[str, Any]:
  mine, theirs = _readings(fronts[reference], kind, level), _readings(fronts[other], kind, level)
  difference = evidence.paired_difference(mine, theirs)
  paired = sorted(s for s in set(mine) & set(theirs)
                  if math.isfinite(mine[s]) and math.isfinite(theirs[s]))
  if kind == TASK_AT_PSNR_LOSS:
    label = f"{metric} at −{level:g} dB"
  elif kind == PSNR_AT_TASK_GAIN:
    label = f"psnr at {metric} +{level:g}"
  else:
    label = f"hypervolume (psnr, {metric})"
  return {
      "name": f"{reference} − {other}: {label}", "other": other, "metric": metric, "kind": kind,
      "level": level, "reference_values": mine, "other_values": theirs,
      "reached": [sum(map(math.isfinite, mine.values())), sum(map(math.isfinite, theirs.values())),
                  len(set(mine) | set(theirs))],
      "differences": {s: mine[s] - theirs[s] for s in paired}, "n": difference.n,
      "mean": difference.mean, "low": difference.low, "high": difference.high,
      "p_value": difference.p_value}


def _front_summary(fronts: Mapping[str, Mapping[int, SeedFront]]) -> dict[str, dict[float, dict]]:
  """Mean and spread (sample std) over seeds of each method's points per λ (0: enhancement-only)."""

  def spread(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

  summary: dict[str, dict[float, dict]] = {}
  for method, by_seed in fronts.items():
    by_weight: dict[float, list[tuple[float, float]]] = {}
    for front in by_seed.values():
      for weight, psnr, task in zip(front.weights, front.psnr, front.task):
        by_weight.setdefault(weight, []).append((psnr, task))
    summary[method] = {
        weight: {"psnr_mean": float(np.mean([p for p, _ in points])),
                 "psnr_std": spread([p for p, _ in points]),
                 "task_mean": float(np.mean([t for _, t in points])),
                 "task_std": spread([t for _, t in points]),
                 "n": len(points)}
        for weight, points in sorted(by_weight.items())}
  return summary


def headroom(runs: Mapping[tuple[str, int], evidence.Run], task_metric: str) -> dict[str, Any]:
  """The judge's headroom over enhancement-only's output (judge on high-quality images − judge on
  enhancement-only's, seed-paired) and the run's recogniser's (``hq_input_<m>`` − ``<m>``); a
  setting whose judge headroom (the recogniser's in runs without a judge) is below the metric's
  margin cannot decide a comparison on it.

  >>> run = evidence.Run(ENHANCE_ONLY, 0, {"judge_auc": 0.90, "judge_high_quality_auc": 0.905}, [])
  >>> room = headroom({(ENHANCE_ONLY, 0): run, (ENHANCE_ONLY, 1): run}, "auc")
  >>> round(room["judge"]["mean"], 3), room["basis"], room["cannot_decide"]
  (0.005, 'judge', True)
  """
  out: dict[str, Any] = {"margin": margin(task_metric)}
  for name, high, low in (("judge", f"judge_high_quality_{task_metric}", f"judge_{task_metric}"),
                          ("recognizer", f"hq_input_{task_metric}", task_metric)):
    d = evidence.paired_difference(evidence.values(runs, ENHANCE_ONLY, high),
                                   evidence.values(runs, ENHANCE_ONLY, low))
    out[name] = {"n": d.n, "mean": d.mean, "low": d.low, "high": d.high}
  basis = next((name for name in ("judge", "recognizer") if math.isfinite(out[name]["mean"])), None)
  out["basis"] = basis
  out["cannot_decide"] = basis is not None and out[basis]["mean"] < out["margin"]
  return out


def gate_table(runs: Mapping[tuple[str, int], evidence.Run]) -> dict[str, dict[str, Any]]:
  """Per row whose runs logged the gate-reliability probe: its probes pooled over seeds, the
  one-sided test against a coin flip and the implied per-half sign accuracy
  (:func:`gate_reliability`)."""
  pooled: dict[str, list[int]] = {}
  for (row, _), run in sorted(runs.items()):
    agree = run.train_series("gate_probe/halves_agree")
    if agree:
      total = pooled.setdefault(row, [0, 0])
      total[0] += int(round(sum(agree)))
      total[1] += len(agree)
  table = {}
  for row, (agreeing, probes) in pooled.items():
    reliability = gate_reliability(agreeing, probes)
    table[row] = {**dataclasses.asdict(reliability), "agreement": reliability.agreement}
  return table


def compare_fronts(runs: Mapping[tuple[str, int], evidence.Run], *, task_metrics: Sequence[str],
                   psnr_losses: Sequence[float] = PSNR_LOSSES,
                   task_gains: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
                   reference: str = REFERENCE_METHOD) -> dict[str, Any]:
  """Every front comparison of one setting (``runs``: :func:`evidence.load_runs`'s mapping).

  For each task metric ``m`` of ``task_metrics`` and its judge's ``judge_m`` (where the runs have
  it), ``reference`` against every other method prefix: the task metric at each PSNR loss, the PSNR
  at each task gain (``task_gains``: one list for every metric, or a mapping by task metric, read
  for its ``judge_`` key too; else :func:`default_task_gains` per metric) and the hypervolume,
  seed-paired; Holm over the family of the setting's comparisons with duplicates dropped; verdicts
  (:func:`evidence.verdict`) from Bonferroni intervals with the metrics' margins, or "cannot decide"
  on a metric whose judge headroom is below its margin. Returns a JSON-ready mapping.
  """
  metrics = [key for m in task_metrics for key in (m, f"judge_{m}")
             if any(key in run.results for run in runs.values())]
  out: dict[str, Any] = {
      "reference": reference, "task_metrics": list(task_metrics), "metrics": metrics,
      "psnr_losses": list(psnr_losses), "task_gains": {}, "fronts": {}, "comparisons": [],
      "headroom": {m: headroom(runs, m) for m in task_metrics},
      "gate": gate_table(runs),
      "hypervolume_reference": f"(enhancement-only PSNR − {HYPERVOLUME_PSNR_WIDTH:g} dB, "
                               "enhancement-only task metric), per seed"}
  for metric in metrics:
    fronts = method_fronts(runs, metric)
    if reference not in fronts:
      raise ValueError(f"No {reference}_l<λ> run with an enhancement-only run of the same seed.")
    given = (task_gains.get(metric.removeprefix("judge_")) if isinstance(task_gains, Mapping)
             else task_gains)
    gains = list(given) if given is not None else default_task_gains(fronts)
    out["task_gains"][metric] = gains
    out["fronts"][metric] = _front_summary(fronts)
    levels = ([(TASK_AT_PSNR_LOSS, loss) for loss in psnr_losses]
              + [(PSNR_AT_TASK_GAIN, gain) for gain in gains] + [(HYPERVOLUME, None)])
    out["comparisons"] += [_comparison(reference, other, metric, kind, level, fronts)
                           for other in fronts if other != reference for kind, level in levels]
  comparisons = out["comparisons"]
  holm_family(comparisons)
  level = 1 - 0.05 / max(sum(map(math.isfinite, (c["holm_p"] for c in comparisons))), 1)
  out["bonferroni_level"] = level
  for c in comparisons:
    c["bonferroni_low"], c["bonferroni_high"], c["verdict"] = _bonferroni_reading(
        c, c["reference_values"], c["other_values"], out["headroom"], level)
    if c["duplicate_of"] is not None:
      c["verdict"] = f"duplicate of {c['duplicate_of']}"
    elif c["n"] < 2:
      c["verdict"] = "not reached" if c["kind"] == PSNR_AT_TASK_GAIN else "too few seeds"
  return out
