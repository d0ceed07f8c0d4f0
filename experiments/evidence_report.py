r"""Reads a seed-paired comparison the way `results/pretrained_recognizer/PROTOCOL.md` fixes; short.

  # 1. after the seed-0 λ sweep: choose each method's λ on validation (writes DIR/selection.json)
  python experiments/evidence_report.py select DIR --task_metric auc
  # 2. after the seed runs at the chosen λ: paired differences, fronts, claims (DIR/report.md, ...)
  python experiments/evidence_report.py report DIR --task_metric auc --setting "PneumoniaMNIST ..."
  # 3. the claims of several settings as one table (the opening table of RESULTS.md)
  python experiments/evidence_report.py claims DIR [DIR ...]
  # 3b. a λ-grid study: every method's front over λ per seed, compared at matched PSNR loss / task
  #     gain and by hypervolume (DIR/fronts.md, DIR/fronts.json, DIR/plots/fronts_*.png)
  python experiments/evidence_report.py fronts DIR --task_metric auc \
      --task_metric balanced_accuracy --setting "PneumoniaMNIST ..." [--psnr_losses 0.1,0.25,0.5,1] [--task_gains 0.01,0.02]
  # 3c. several fronts settings as one family (a claim spanning them; OUT/across_settings.md, .json)
  python experiments/evidence_report.py across results/fronts/pneumoniamnist results/fronts/ph2_sr8_noisy_seg \
      --output results/fronts
  # 4. a side study (rows named freely): paired differences of one reference row against the rest
  python experiments/evidence_report.py paired DIR --reference gp_hard --metrics psnr,ssim,auc,judge_auc \
      --title "..."
  # copy finished runs (results.json, run.json, config.json, metrics.jsonl.gz) into results/
  python experiments/evidence_report.py collect WORKDIR DESTINATION

DIR is an `experiments/compare.py` directory whose λ rows are named ``<method>_l<λ>``. Every number
written is computed here from the runs' results.json and metrics.jsonl; the logic is in
`experiments.tools.evidence` and, for fronts, `experiments.tools.fronts`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository: experiments.tools
from experiments.tools import evidence, fronts  # noqa: E402

SELECTION_FILENAME = "selection.json"
CLAIMS_FILENAME = "claims.json"
# The protocol's margins (non-inferiority) and the "close to enhancement-only" margin.
MARGINS = {"psnr": 0.1, "ssim": 0.005}
TASK_MARGIN = 0.01
CLOSE_TO_ENHANCE_ONLY_DB = 0.5
GRADPROM = "gradprom"


def _fmt(value: float, digits: int = 4) -> str:
  return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_std(vals: list[float]) -> str:
  vals = [v for v in vals if math.isfinite(v)]
  if not vals:
    return "—"
  std = np.std(vals, ddof=1) if len(vals) > 1 else float("nan")
  return f"{np.mean(vals):.4f} ± {_fmt(std)} ({len(vals)})"


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def _judge_metric(task_metric: str) -> str:
  return f"judge_{task_metric}"


def _sweep(runs, seed: int = 0):
  """``{method: {λ: run}}`` of the λ rows at ``seed``."""
  sweep: dict[str, dict[float, evidence.Run]] = {}
  for (row, run_seed), run in runs.items():
    parsed = evidence.lambda_row(row)
    if parsed and run_seed == seed:
      sweep.setdefault(parsed[0], {})[parsed[1]] = run
  return sweep


def select(directory: Path, task_metric: str) -> dict:
  runs = evidence.load_runs(directory)
  reference = runs.get(("enhance_only", 0))
  if reference is None:
    sys.exit(f"{directory}/enhance_only/seed_0 has not finished: it is the PSNR reference.")
  reference_psnr = reference.final_validation()["psnr"]
  judge = _judge_metric(task_metric)
  lines = ["# λ chosen on validation (seed 0, final step)\n",
           f"Rule (PROTOCOL.md): admissible λ keep validation PSNR ≥ enhancement-only's "
           f"({reference_psnr:.4f} dB) − 1.0 dB; among them the highest validation {task_metric} of "
           "the run's own recogniser (ties < 0.002 broken by PSNR); none admissible: the highest PSNR.\n"]
  selection, table = {}, []
  for method, by_weight in sorted(_sweep(runs).items()):
    validation = {w: run.final_validation() for w, run in by_weight.items()}
    chosen = evidence.choose_lambda(validation, reference_psnr=reference_psnr,
                                    task_metric=task_metric)
    selection[method] = chosen
    for weight in sorted(validation):
      v = validation[weight]
      rate = by_weight[weight].train_series("gate_open_rate")
      table.append([method, f"{weight:g}", _fmt(v["psnr"]), _fmt(v.get("ssim")),
                    _fmt(v.get(task_metric)), _fmt(v.get(judge, math.nan)),
                    _fmt(rate[-1] if rate else math.nan, 3), "**chosen**" if weight == chosen else ""])
  v = reference.final_validation()
  table.append(["enhance_only", "—", _fmt(v["psnr"]), _fmt(v.get("ssim")), _fmt(v.get(task_metric)),
                _fmt(v.get(judge, math.nan)), "—", "reference"])
  lines.append(_table(["method", "λ", "val psnr", "val ssim", f"val {task_metric}", f"val {judge}",
                       "gate-open rate", ""], table))
  if GRADPROM in selection:
    rate = _sweep(runs)[GRADPROM][selection[GRADPROM]].train_series("gate_open_rate")
    selection["random_gate"] = {"task_weight": selection[GRADPROM], "open_rate": round(rate[-1], 3)}
    lines.append(f"\nrandom_gate control: λ = {selection[GRADPROM]:g}, open rate = "
                 f"{rate[-1]:.3f} (GradProm's at its chosen λ).")
  (directory / SELECTION_FILENAME).write_text(json.dumps(selection, indent=2) + "\n")
  (directory / "lambda_selection.md").write_text("\n".join(lines) + "\n")
  print("\n".join(lines))
  return selection


def _plot_fronts(path: Path, runs, task_metric: str, metric_key: str) -> None:
  figure, axes = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
  for method, by_weight in sorted(_sweep(runs).items()):
    weights = sorted(by_weight)
    points = [by_weight[w].final_validation() for w in weights]
    x = [p["psnr"] for p in points]
    y = [p.get(metric_key, math.nan) for p in points]
    axes.plot(x, y, marker="o", label=method)
    for w, xi, yi in zip(weights, x, y):
      axes.annotate(f"{w:g}", (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
  reference = runs.get(("enhance_only", 0))
  if reference is not None:
    v = reference.final_validation()
    axes.plot([v["psnr"]], [v.get(metric_key, math.nan)], marker="*", markersize=12, color="k",
              linestyle="none", label="enhance_only")
  _save_front_figure(figure, axes, path, "validation PSNR (dB)", f"validation {metric_key}",
                     "Fronts over λ (seed 0; labels are λ)")


def _save_front_figure(figure, axes, path: Path, xlabel: str, ylabel: str, title: str) -> None:
  axes.set_xlabel(xlabel)
  axes.set_ylabel(ylabel)
  axes.set_title(title)
  axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
  figure.savefig(path, dpi=110)
  plt.close(figure)


def report(directory: Path, task_metric: str, setting: str) -> dict:
  runs = evidence.load_runs(directory)
  selection = json.loads((directory / SELECTION_FILENAME).read_text())
  rows = {m: f"{m}_l{w:g}" for m, w in selection.items() if m != "random_gate"}
  for control in ("enhance_only", "random_gate", "two_stage"):
    if any(row == control for row, _ in runs):
      rows[control] = control
  judge = _judge_metric(task_metric)
  metrics = ["psnr", "ssim", task_metric, judge]
  seeds = sorted({s for (r, s) in runs if r == rows.get(GRADPROM)})
  out = [f"# {setting}\n", f"Rows at the λ chosen on validation (lambda_selection.md); seeds "
         f"{seeds}; test split. `judge_*`: the fixed recogniser trained on high-quality images only.\n"]
  # The judge on each run's unenhanced input and on the high-quality images: where the rows sit
  # between the two.
  references = [f"judge_no_enhancement_{task_metric}", f"judge_high_quality_{task_metric}"]
  table = []
  for name, row in rows.items():
    table.append([f"{name} (`{row}`)"] + [_mean_std(list(evidence.values(runs, row, m).values()))
                                          for m in metrics + references])
  out += ["## Test metrics (mean ± std over seeds, n)\n",
          _table(["row"] + metrics + [f"judge on the interpolated input: {task_metric}",
                                      f"judge on high-quality: {task_metric}"], table), ""]

  # Paired differences GradProm − each other row; Holm over the family; Bonferroni intervals.
  others = [name for name in rows if name != GRADPROM]
  pairs = [(other, metric) for other in others for metric in metrics]
  diffs = {(o, m): evidence.paired_difference(evidence.values(runs, rows[GRADPROM], m),
                                              evidence.values(runs, rows[o], m)) for o, m in pairs}
  adjusted = dict(zip(pairs, evidence.holm([diffs[p].p_value for p in pairs])))
  level = 1 - 0.05 / max(len(pairs), 1)
  wide = {(o, m): evidence.paired_difference(evidence.values(runs, rows[GRADPROM], m),
                                             evidence.values(runs, rows[o], m), confidence=level)
          for o, m in pairs}
  digits = {"psnr": 3}
  table = [[f"GradProm − {o}", m, diffs[o, m].format(digits.get(m, 4)),
            f"[{wide[o, m].low:+.4f}, {wide[o, m].high:+.4f}]", f"{adjusted[o, m]:.3g}",
            "yes" if adjusted[o, m] < 0.05 else "no"] for o, m in pairs]
  out += ["## Paired differences (same seed = pair)\n",
          f"Mean difference with its 95 % t interval and paired t-test p; Holm-adjusted p over the "
          f"{len(pairs)} comparisons; Bonferroni interval at level {level:.4f}.\n",
          _table(["comparison", "metric", "mean [95 % CI] (n, p)", "Bonferroni CI", "Holm p",
                  "significant (family-wise 0.05)"], table), ""]

  # The claims of PAPER.md that one setting can decide.
  def claim(other, metric, margin):
    if other not in rows:
      return {"verdict": "undecided", "statistic": f"no {other} row"}
    d = wide[other, metric]
    return {"verdict": evidence.verdict(d.low, d.high, margin),
            "statistic": f"GradProm − {other} {metric}: {d.mean:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"}
  two_stage = "two_stage" if "two_stage" in rows else "enhance_only"
  claims = {
      "1. GradProm ≥ joint on PSNR": claim("joint", "psnr", MARGINS["psnr"]),
      "1. GradProm ≥ joint on SSIM": claim("joint", "ssim", MARGINS["ssim"]),
      "2. GradProm close to (≥ −0.5 dB) or better than enhancement-only on PSNR":
          claim("enhance_only", "psnr", CLOSE_TO_ENHANCE_ONLY_DB),
      "3. GradProm ≥ two-stage on the task metric (the run's recogniser)":
          claim(two_stage, task_metric, TASK_MARGIN),
      "3. GradProm ≥ two-stage on the task metric (the judge)": claim(two_stage, judge, TASK_MARGIN),
      "3. GradProm competitive with joint on the task metric (the run's recogniser)":
          claim("joint", task_metric, TASK_MARGIN),
      "3. GradProm competitive with joint on the task metric (the judge)":
          claim("joint", judge, TASK_MARGIN),
      "4. ⟨update, g_e⟩ ≥ ‖g_e‖² at every step": {
          "verdict": "holds",
          "statistic": "by construction; property-tested (tests/test_gradprom.py, "
                       "tests/test_multitask_combiners.py)"},
  }
  if two_stage == "enhance_only":
    for key in claims:
      if "two-stage" in key:
        claims[key]["statistic"] += " (frozen recogniser: two-stage is enhancement-only)"
  rates = [run.train_series("gate_open_rate")[-1] for (row, _), run in runs.items()
           if row == rows.get(GRADPROM) and run.train_series("gate_open_rate")]
  if rates:
    claims["5. gate-open rate strictly between 0 and 1"] = {
        "verdict": "holds" if 0 < min(rates) and max(rates) < 1 else "does not hold",
        "statistic": f"final gate-open rate {min(rates):.3f}–{max(rates):.3f} over {len(rates)} runs"}
  finished = [run for (row, _), run in runs.items() if row in rows.values()]
  nonfinite = sum(int(run.results.get("nonfinite_steps", 0)) for run in finished)
  claims["6. runs unchanged on this pairing"] = {
      "verdict": "holds" if finished and not nonfinite else "does not hold",
      "statistic": f"{len(finished)} runs finished, {nonfinite} non-finite steps"}
  for name in ("gp_norm", "pcgrad", "random_gate"):
    if name in rows:
      claims[f"(ours) GradProm vs {name} on PSNR"] = claim(name, "psnr", MARGINS["psnr"])
      claims[f"(ours) GradProm vs {name} on the task metric"] = claim(name, task_metric,
                                                                     TASK_MARGIN)
  out += ["## Claims of PAPER.md in this setting\n",
          f"Verdicts from the Bonferroni intervals with the protocol's margins (PSNR {MARGINS['psnr']} "
          f"dB, SSIM {MARGINS['ssim']}, task metrics {TASK_MARGIN}): better (lower bound > 0), holds "
          "(lower bound > −margin), does not hold (upper bound < −margin), undecided.\n",
          _table(["claim", "verdict", "statistic"],
                 [[k, v["verdict"], v["statistic"]] for k, v in claims.items()]), ""]

  probes = _gate_probes(runs)
  if probes:
    table = [[str(batch), _fmt(agree, 3), str(count), _fmt(median_cosine, 3)]
             for batch, agree, count, median_cosine in probes]
    out += ["## Gate reliability\n",
            "GradProm at the chosen λ, seed 0; every 10 steps the cosine of g_e and g_t on two "
            "disjoint halves of the batch. 0.5 agreement is a coin flip.\n",
            _table(["batch", "halves agree in sign", "probes",
                    "median absolute cosine (whole batch)"], table), ""]

  plots = directory / "plots"
  plots.mkdir(exist_ok=True)
  for key in (task_metric, judge):
    _plot_fronts(plots / f"front_psnr_{key}.png", runs, task_metric, key)
  out += ["## Fronts over λ (validation, seed 0)\n",
          f"![front](plots/front_psnr_{judge}.png) ![front](plots/front_psnr_{task_metric}.png)\n",
          "The table behind them is lambda_selection.md.\n"]
  infos = [json.loads(p.read_text()) for p in sorted(directory.glob("*/seed_*/run.json"))]
  total = sum(info.get("wall_seconds", 0.0) for info in infos)
  example = next((i["command"] for i in infos
                  if f"/{rows.get(GRADPROM)}/" in i.get("command", "")), None)
  if example:
    out.append(f"Command of one run (every run's is in its run.json): `{example}`\n")
  out.append(f"Run time, summed over the {len(runs)} finished runs: {total / 60:.1f} min.\n")
  (directory / "report.md").write_text("\n".join(out))
  (directory / CLAIMS_FILENAME).write_text(json.dumps({"setting": setting, "claims": claims},
                                                      indent=2, ensure_ascii=False) + "\n")
  print("\n".join(out))
  return claims


def _final_gate_open_rates(runs: list[evidence.Run]) -> str:
  """The runs' mean final gate-open rate, per task for a multi-task run (``gate_open_rate/<task>``).

  >>> run = evidence.Run("r", 0, {}, [{"kind": "train", "gate_open_rate/a": 0.5,
  ...                                  "gate_open_rate/b": 0.25}])
  >>> _final_gate_open_rates([run])
  'a 0.500, b 0.250'
  """
  keys = sorted({k for run in runs for record in run.records if record.get("kind") == "train"
                 for k in record if k == "gate_open_rate" or k.startswith("gate_open_rate/")})
  cells = []
  for key in keys:
    finals = [run.train_series(key)[-1] for run in runs if run.train_series(key)]
    label = key.removeprefix("gate_open_rate").removeprefix("/")
    cells.append(f"{label} {np.mean(finals):.3f}".strip())
  return ", ".join(cells)


def paired(directory: Path, reference: str, metrics: list[str], title: str,
           filename: str = "paired.md", only_rows: list[str] | None = None,
           shown: list[str] = ()) -> str:
  """Every row of ``directory`` against ``reference``, seed-paired (Holm over the family).

  For side studies whose rows are not a λ sweep (a gate option, several tasks on one enhancer):
  test metrics per row, paired differences reference − row with 95 % t intervals, Holm-adjusted p,
  and each row's final gate-open rate and half-batch sign agreement where it logged them.
  ``only_rows``: compare the reference with these rows only (a study's chosen rows, not its sweep).
  ``shown``: metrics shown in the table but not compared (references such as the judge on
  high-quality images, the same for every row).
  """
  runs = evidence.load_runs(directory)
  if only_rows:
    runs = {key: run for key, run in runs.items() if key[0] in {reference, *only_rows}}
  rows = sorted({row for row, _ in runs}, key=lambda r: (r != reference, r))

  def values(row: str, metric: str) -> dict[int, float]:
    """``a|b``: a run's ``a``, or its ``b`` where it has no ``a`` (a multi-task run's
    ``dice/segmentation`` beside a single-task run's ``dice``)."""
    out = {}
    for key in reversed(metric.split("|")):
      out.update({s: v for s, v in evidence.values(runs, row, key).items() if math.isfinite(v)})
    return out

  if reference not in rows:
    raise SystemExit(f"paired: no finished run of row {reference!r} under {directory} "
                     f"(rows: {', '.join(rows) or 'none'})")
  out = [f"# {title}\n", f"Test split; mean ± std over seeds (n). Every number is computed by "
         f"`experiments/evidence_report.py paired` from the runs' results.json and metrics.jsonl.\n"]
  table = []
  for row in rows:
    cells = [_mean_std(list(values(row, m).values())) for m in [*metrics, *shown]]
    rates = _final_gate_open_rates([r for (name, _), r in runs.items() if name == row])
    agreement = [evidence.halves_agreement(r) for (name, _), r in runs.items() if name == row]
    agreement = [a for a, count in agreement if count]
    table.append([f"`{row}`"] + cells + [rates or "—",
                                         _fmt(float(np.mean(agreement)), 3) if agreement else "—"])
  labels = [m.replace("|", " or ") for m in [*metrics, *shown]]   # a "|" would split a cell
  out += ["## Test metrics\n", _table(["row"] + labels + ["gate-open rate (final, mean)",
                                                          "halves agree in sign (mean)"], table), ""]
  # A row that lacks a metric (a single-task row, the other task's) is not compared on it.
  pairs = [(row, m) for row in rows if row != reference for m in metrics if values(row, m)]
  diffs = {(o, m): evidence.paired_difference(values(reference, m), values(o, m))
           for o, m in pairs}
  adjusted = dict(zip(pairs, evidence.holm([diffs[p].p_value for p in pairs])))
  table = [[f"{reference} − {o}", m.replace("|", " or "),
            diffs[o, m].format(3 if m.endswith("psnr") else 4),
            f"{adjusted[o, m]:.3g}", "yes" if adjusted[o, m] < 0.05 else "no"] for o, m in pairs]
  out += ["## Paired differences (same seed = pair)\n",
          f"Mean difference with its 95 % t interval and paired t-test p; Holm-adjusted p over the "
          f"{len(pairs)} comparisons.\n",
          _table(["comparison", "metric", "mean [95 % CI] (n, p)", "Holm p",
                  "significant (family-wise 0.05)"], table), ""]
  infos = [json.loads(p.read_text()) for p in sorted(directory.glob("*/seed_*/run.json"))]
  example = next((i["command"] for i in infos if f"/{reference}/" in i.get("command", "")), None)
  if example:
    out.append(f"Command of one run (every run's is in its run.json): `{example}`\n")
  text = "\n".join(out)
  (directory / filename).write_text(text)
  print(text)
  return text


def _gate_probes(runs: dict) -> list[tuple[int, float, int, float]]:
  """(batch, halves-agreement rate, probes, median |cosine| of the whole batch) per ``gp_batch<N>``
  row (seed 0), by batch."""
  probes = []
  for (row, _), run in runs.items():
    if row.startswith("gp_batch"):
      agree, count = evidence.halves_agreement(run)
      cosines = run.train_series("gate_probe/cosine_full")
      probes.append((int(row.removeprefix("gp_batch")), agree, count,
                     float(np.median(np.abs(cosines))) if cosines else math.nan))
  return sorted(probes)


def gate_reliability_table(directories: list[Path]) -> str:
  """Setting × batch: how often the two half-batch cosines agree in sign, with the exact binomial
  p-value against a coin flip; then every setting pooled per batch. Empty without probe rows."""
  rows, pooled = [], {}
  for directory in directories:
    setting = json.loads((directory / CLAIMS_FILENAME).read_text())["setting"]
    for batch, agree, count, median_cosine in _gate_probes(evidence.load_runs(directory)):
      agreeing = round(agree * count)
      rows.append([setting, str(batch), f"{agreeing}/{count} = {agree:.3f}",
                   f"{evidence.coin_flip_p_value(agreeing, count):.3g}", _fmt(median_cosine, 3)])
      total = pooled.setdefault(batch, [0, 0])
      total[0] += agreeing
      total[1] += count
  if not rows:
    return ""
  for batch, (agreeing, count) in sorted(pooled.items()):
    rows.append(["pooled over the settings with this batch", str(batch),
                 f"{agreeing}/{count} = {agreeing / count:.3f}",
                 f"{evidence.coin_flip_p_value(agreeing, count):.3g}", "—"])
  return _table(["setting", "batch", "halves agree in sign", "p (coin flip)",
                 "median absolute cosine (whole batch)"], rows)


def claims_table(directories: list[Path]) -> str:
  """Claim × setting, from each directory's claims.json."""
  settings = [json.loads((d / CLAIMS_FILENAME).read_text()) for d in directories]
  names = list(dict.fromkeys(k for s in settings for k in s["claims"]))
  rows = []
  for name in names:
    cells = []
    for s in settings:
      c = s["claims"].get(name)
      cells.append("—" if c is None else f"**{c['verdict']}**: {c['statistic']}")
    rows.append([name] + cells)
  return _table(["claim"] + [s["setting"] for s in settings], rows)

FRONTS_FILENAME = "fronts.json"


def _plot_method_fronts(path: Path, summary: dict, metric: str) -> None:
  """Each method's mean point per λ with its spread over seeds (±1 std on both axes), λ = 0 being
  enhancement-only's."""
  figure, axes = plt.subplots(figsize=(7.5, 4.5), constrained_layout=True)
  for method, by_weight in summary.items():
    weights = sorted(by_weight)
    points = [by_weight[w] for w in weights]
    axes.errorbar([p["psnr_mean"] for p in points], [p["task_mean"] for p in points],
                  xerr=[p["psnr_std"] for p in points], yerr=[p["task_std"] for p in points],
                  marker="o", markersize=4, capsize=2, label=method)
    for w, p in zip(weights[1:], points[1:]):
      axes.annotate(f"{w:g}", (p["psnr_mean"], p["task_mean"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
  _save_front_figure(figure, axes, path, "test PSNR (dB)", f"test {metric}",
                     "Fronts over λ: mean ± std over seeds (labels are λ; unlabelled end: "
                     "enhance_only)")


def _jsonable(value):
  """NaN and ±inf as null (strict JSON), keys as strings."""
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _interval(d: dict) -> str:
  return f"{_fmt(d['mean'])} [{_fmt(d['low'])}, {_fmt(d['high'])}] (n={d['n']})"


def _front_points_table(summary: dict[str, dict[float, dict]], reference: str) -> str:
  """λ down, methods across (``reference`` first): "PSNR / task" means over seeds
  (fronts._front_summary's)."""
  methods = sorted(summary, key=lambda method: (method != reference, method))
  weights = sorted({w for points in summary.values() for w in points})
  rows = [[f"{w:g}"] + [f"{summary[m][w]['psnr_mean']:.3f} / {summary[m][w]['task_mean']:.4f}"
                        if w in summary[m] else "—" for m in methods] for w in weights]
  return _table(["λ"] + methods, rows)


def _comparison_cells(c: dict) -> list[str]:
  digits = 3 if c["kind"] == fronts.PSNR_AT_TASK_GAIN else 4
  mine, theirs, seeds = c["reached"]
  reached = "" if mine == theirs == seeds else f"; reached {mine}/{seeds} vs {theirs}/{seeds}"
  if c["n"] < 2:
    statistic = f"not reached (n={c['n']} paired seeds{reached})"
  else:
    statistic = (f"{c['mean']:+.{digits}f} [{c['low']:+.{digits}f}, {c['high']:+.{digits}f}] "
                 f"(n={c['n']}, p={c['p_value']:.3g}{reached})")
  holm = "—" if not math.isfinite(c["holm_p"]) else f"{c['holm_p']:.3g}"
  return [c["name"], statistic, holm, c["verdict"]]


def parse_task_gains(specs: list[str] | None) -> list[float] | dict[str, list[float]] | None:
  """``--task_gains`` values: ``g1,g2`` for every metric, or ``METRIC=g1,g2`` per task metric.

  >>> parse_task_gains(["balanced_accuracy=0.05,0.1", "auc=0.005"])
  {'balanced_accuracy': [0.05, 0.1], 'auc': [0.005]}
  >>> parse_task_gains(["0.01,0.02"])
  [0.01, 0.02]
  """
  if not specs:
    return None
  per_metric = {}
  for spec in specs:
    metric, _, values = spec.rpartition("=")
    gains = [float(g) for g in values.split(",")]
    if not metric:
      if len(specs) > 1:
        raise SystemExit("--task_gains: give one list for every metric, or METRIC=... for each")
      return gains
    per_metric[metric] = gains
  return per_metric


def fronts_report(directory: Path, task_metrics: list[str], setting: str,
                  psnr_losses: list[float],
                  task_gains: list[float] | dict[str, list[float]] | None) -> dict:
  """The λ-grid study read on fronts: DIR/fronts.md, DIR/fronts.json, DIR/plots/fronts_*.png."""
  result = fronts.compare_fronts(evidence.load_runs(directory), task_metrics=task_metrics,
                                 psnr_losses=psnr_losses, task_gains=task_gains)
  result["setting"] = setting
  reference = result["reference"]
  plots = directory / "plots"
  plots.mkdir(exist_ok=True)
  out = [f"# {setting}: fronts over λ\n",
         "Every method over its λ grid, test split; per seed a front of (PSNR, task metric) points "
         "in order of λ, enhancement-only of the same seed as its λ → 0 end, joined by straight "
         "segments and made monotone by a running maximum (the task metric at PSNR p is the best "
         "on the front with PSNR ≥ p). Every number is computed by `experiments/evidence_report.py "
         "fronts` from the runs' results.json and metrics.jsonl.\n"]
  for metric in result["metrics"]:
    _plot_method_fronts(plots / f"fronts_{metric}.png", result["fronts"][metric], metric)
    out.append(f"![fronts {metric}](plots/fronts_{metric}.png)")
  out += ["", "## Front points (mean over seeds)\n",
          "Each method's test point at each λ, PSNR (dB) / task metric, mean over seeds (the plots "
          "show their seed bands); λ = 0 is enhancement-only, every front's start.\n"]
  for metric in result["metrics"]:
    out += [f"**{metric}**\n", _front_points_table(result["fronts"][metric], reference), ""]
  comparisons = result["comparisons"]
  family = sum(map(math.isfinite, (c["holm_p"] for c in comparisons)))
  out += ["", "## Matched comparisons (same seed = pair)\n",
          f"{reference} − other, read off each method's own front per seed: the task metric at "
          f"{', '.join(f'{x:g}' for x in result['psnr_losses'])} dB below the seed's "
          "enhancement-only PSNR; the PSNR at task gains over enhancement-only ("
          + "; ".join(f"{m}: {', '.join(f'{g:g}' for g in gains) or 'none'}"
                      for m, gains in result["task_gains"].items())
          + "), a gain a front never attains being *not reached* (never extrapolated); the "
          f"hypervolume of the measured points against {result['hypervolume_reference']}. Mean "
          f"difference with its 95 % t interval and paired t-test p; Holm over the {family} "
          "comparisons of the setting that are tests (exact duplicates and those with fewer than 2 "
          "paired seeds dropped); verdict from the Bonferroni "
          f"interval at level {result['bonferroni_level']:.4f} with the margins (task "
          f"{fronts.TASK_MARGIN}, PSNR {fronts.MARGINS['psnr']} dB, hypervolume "
          f"{fronts.HYPERVOLUME_MARGIN:g} dB·metric).\n",
          _table(["comparison", "mean [95 % CI] (n, p)", "Holm p", "verdict"],
                 [_comparison_cells(c) for c in comparisons]), "", "## Headroom\n"]
  for metric, room in result["headroom"].items():
    judge, own = (_interval(room[name]) for name in ("judge", "recognizer"))
    if room["basis"] is None:
      decision = "Not measured (no high-quality reference in the runs)."
    elif room["cannot_decide"]:
      decision = f"**cannot decide**: the {room['basis']}'s is below the margin {room['margin']:g}."
    else:
      decision = f"The {room['basis']}'s is above the margin {room['margin']:g}."
    out.append(f"- {metric}: judge on high-quality − judge on enhancement-only's output {judge}; "
               f"the run's recogniser {own}. {decision}")
  if result["gate"]:
    rows = [[f"`{row}`", f"{g['agreeing']}/{g['probes']} = {g['agreement']:.3f}",
             f"{g['p_value']:.3g}",
             f"{g['accuracy']:.3f} [{g['accuracy_low']:.3f}, {g['accuracy_high']:.3f}]"]
            for row, g in result["gate"].items()]
    out += ["", "## Gate reliability\n",
            "Probes pooled over seeds: how often the cosines of two disjoint half-batches agree in "
            "sign; exact one-sided binomial test of agreement > 0.5; the per-half sign accuracy a "
            "implied if each half reads the sign right independently (agreement = a² + (1 − a)²), "
            "with the exact 95 % interval of the agreement mapped through it.\n",
            _table(["row", "halves agree in sign", "p (one-sided, > coin flip)",
                    "per-half sign accuracy [95 % CI]"], rows)]
  text = "\n".join(out) + "\n"
  (directory / "fronts.md").write_text(text)
  (directory / FRONTS_FILENAME).write_text(
      json.dumps(_jsonable(result), indent=2, ensure_ascii=False) + "\n")
  print(text)
  return result


ACROSS_FILENAME = "across_settings"   # .md and .json beside the settings' directories
RANDOM_GATE = "random_gate"   # the protocol's control for the amount of task gradient


def across_report(directories: list[Path], output: Path) -> dict:
  """Several fronts settings corrected as one family (the correction for a claim spanning them):
  OUTPUT/across_settings.md and .json from each DIR/fronts.json, the setting named by its directory."""
  reports = {d.name: json.loads((d / FRONTS_FILENAME).read_text()) for d in directories}
  result = fronts.compare_across_settings(reports)
  out = [f"# Fronts across settings: {', '.join(reports)}\n",
         "Every test of every setting's matched comparisons (`fronts.json`, made by "
         "`evidence_report.py fronts`) in one family: Holm over the union of the "
         f"{result['family_size']} tests, verdicts from Bonferroni intervals at level "
         f"{result['bonferroni_level']:.5f} with the protocol's margins, and \"cannot decide\" where "
         "a setting's headroom is below the margin. Computed by `experiments/evidence_report.py "
         "across`.\n",
         "## Verdicts per setting and compared method (every test of the setting)\n"]
  verdicts = ("better", "holds", "undecided", "does not hold")
  rows = []
  for name, comparisons in result["settings"].items():
    for other in sorted({c["other"] for c in comparisons}):
      mine = [c["across_verdict"] for c in comparisons if c["other"] == other]
      rows.append([name, f"{reports[name]['reference']} − {other}", str(len(mine))]
                  + [str(sum(v == verdict for v in mine)) for verdict in verdicts]
                  + [str(sum(v.startswith("cannot decide") for v in mine))])
  out += [_table(["setting", "comparison", "tests", *verdicts, "cannot decide"], rows), ""]
  out.append("## The primary metric (the run's recogniser's first task metric)\n")
  primary_rows = []
  for name, comparisons in result["settings"].items():
    primary = reports[name]["task_metrics"][0]
    for c in comparisons:
      if c["metric"] == primary:
        primary_rows.append([name, c["name"], f"{c['mean']:+.4f}",
                             f"[{c['across_low']:+.4f}, {c['across_high']:+.4f}]",
                             f"{c['across_holm_p']:.3g}", c["across_verdict"]])
  out += [_table(["setting", "comparison", "mean", "Bonferroni interval (across)", "Holm p (across)",
                  "verdict"], primary_rows), ""]
  wins = [f"{name}: {c['name']}" for name, comparisons in result["settings"].items()
          for c in comparisons if c["other"] == RANDOM_GATE and c["across_verdict"] == "better"
          and (c["metric"] == reports[name]["task_metrics"][0] or c["kind"] == fronts.HYPERVOLUME)]
  out.append("**A win for the gate** (the protocol's rule: GradProm *better* than the random gate on "
             "a primary metric or the hypervolume, here corrected across the settings): "
             + ("; ".join(wins) if wins else "none") + ".")
  text = "\n".join(out) + "\n"
  output.mkdir(parents=True, exist_ok=True)
  (output / f"{ACROSS_FILENAME}.md").write_text(text)
  (output / f"{ACROSS_FILENAME}.json").write_text(
      json.dumps(_jsonable(result), indent=2, ensure_ascii=False) + "\n")
  print(text)
  return result


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  for name in ("select", "report"):
    p = sub.add_parser(name)
    p.add_argument("directory", type=Path)
    p.add_argument("--task_metric", required=True)
    if name == "report":
      p.add_argument("--setting", required=True)
  p = sub.add_parser("fronts", help="every method's front over λ, compared at matched points")
  p.add_argument("directory", type=Path)
  p.add_argument("--task_metric", required=True, action="append",
                 help="a results.json key (its judge_ key is read too); repeatable")
  p.add_argument("--setting", required=True)
  p.add_argument("--psnr_losses", default=",".join(f"{x:g}" for x in fronts.PSNR_LOSSES))
  p.add_argument("--task_gains", default=None, action="append",
                 help="comma-separated gains for every metric, or METRIC=g1,g2 (repeatable, per "
                 "task metric; its judge_ key uses the same); default: ¼, ½, ¾ of the fronts' "
                 "median largest gain")
  p = sub.add_parser("across", help="several fronts settings' comparisons as one Holm family")
  p.add_argument("directories", type=Path, nargs="+", help="setting directories with fronts.json")
  p.add_argument("--output", type=Path, required=True,
                 help=f"where {ACROSS_FILENAME}.md and .json are written")
  p = sub.add_parser("collect", help="copy finished runs (metrics gzip-compressed) into results/")
  p.add_argument("workdir", type=Path)
  p.add_argument("destination", type=Path)
  p = sub.add_parser("claims")
  p.add_argument("directories", type=Path, nargs="+")
  p = sub.add_parser("paired", help="one reference row against every other row, seed-paired")
  p.add_argument("directory", type=Path)
  p.add_argument("--reference", required=True)
  p.add_argument("--metrics", required=True,
                 help="comma-separated results.json keys; a|b: a, or b for runs without a")
  p.add_argument("--title", required=True)
  p.add_argument("--rows", default="", help="comma-separated rows to compare with the reference "
                 "(default: every row)")
  p.add_argument("--output", default="paired.md", help="file name of the report in DIRECTORY")
  p.add_argument("--show", default="", help="comma-separated metrics shown, not compared")
  args = parser.parse_args(argv)
  if args.command == "select":
    select(args.directory, args.task_metric)
  elif args.command == "report":
    report(args.directory, args.task_metric, args.setting)
  elif args.command == "fronts":
    gains = parse_task_gains(args.task_gains)
    fronts_report(args.directory, args.task_metric, args.setting,
                  [float(x) for x in args.psnr_losses.split(",")], gains)
  elif args.command == "paired":
    paired(args.directory, args.reference, args.metrics.split(","), args.title,
           filename=args.output, only_rows=[r for r in args.rows.split(",") if r],
           shown=[m for m in args.show.split(",") if m])
  elif args.command == "across":
    across_report(args.directories, args.output)
  elif args.command == "collect":
    print(f"Copied {evidence.collect(args.workdir, args.destination)} runs to {args.destination}.")
  else:
    print(claims_table(args.directories))


if __name__ == "__main__":
  main(sys.argv[1:])
