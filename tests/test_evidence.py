"""The seed-paired evidence: λ chosen on validation only, paired intervals, Holm, claim verdicts."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from experiments.tools import evidence

REPORT_SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "evidence_report.py"


def _load_report_module():
  spec = importlib.util.spec_from_file_location("evidence_report", REPORT_SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _write_run(directory, row, seed, *, val, test, gate_rate=0.4, probes=()):
  run = directory / row / f"seed_{seed}"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps({**test, "seed": seed}))
  records = [{"step": 10, "kind": "train", "time": 0.0, "gate_open_rate": gate_rate,
              **{f"gate_probe/{k}": v for k, v in probes}},
             {"step": 5, "kind": "val", "time": 0.0, "psnr": 0.0, "auc": 0.0},   # not the last
             {"step": 10, "kind": "val", "time": 0.0, **val}]
  (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  (run / "run.json").write_text(json.dumps({"wall_seconds": 60.0}))


def test_paired_difference_matches_scipy_and_t_interval():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 0.3, 6), rng.normal(0.0, 0.3, 6)
  d = evidence.paired_difference(dict(enumerate(a)), dict(enumerate(b)))
  diffs = a - b
  half = stats.t.ppf(0.975, 5) * diffs.std(ddof=1) / math.sqrt(6)
  assert d.n == 6 and d.mean == pytest.approx(diffs.mean())
  assert (d.low, d.high) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
  assert d.p_value == pytest.approx(stats.ttest_rel(a, b).pvalue)
  # Only seeds present (and finite) in both rows pair up.
  d = evidence.paired_difference({0: 1.0, 1: 2.0, 2: math.nan, 3: 5.0}, {0: 0.0, 1: 0.5, 2: 1.0})
  assert d.n == 2 and d.mean == pytest.approx(1.25)


def test_holm_is_monotone_and_bounded():
  p = [0.001, 0.2, 0.01, 0.04, 0.5]
  adjusted = evidence.holm(p)
  assert adjusted[0] == pytest.approx(0.005)
  assert all(a >= raw for a, raw in zip(adjusted, p)) and max(adjusted) <= 1.0
  order = np.argsort(p)
  assert all(np.diff(np.array(adjusted)[order]) >= 0)


def test_choose_lambda_follows_the_protocol_rule():
  validation = {0.01: {"psnr": 26.0, "auc": 0.90}, 0.1: {"psnr": 25.2, "auc": 0.93},
                0.3: {"psnr": 25.1, "auc": 0.9315}, 1.0: {"psnr": 22.0, "auc": 0.99}}
  # λ = 1 has the best AUC but loses more than 1 dB; 0.3 and 0.1 tie (< 0.002): higher PSNR wins.
  assert evidence.choose_lambda(validation, reference_psnr=26.1, task_metric="auc") == 0.1
  # Nothing admissible: the highest PSNR.
  assert evidence.choose_lambda(validation, reference_psnr=40.0, task_metric="auc") == 0.01


def test_select_and_report_on_a_synthetic_sweep(tmp_path, capsys):
  report_module = _load_report_module()
  rng = np.random.default_rng(1)
  for seed in range(5):
    noise = lambda: float(rng.normal(0, 0.01))   # noqa: E731
    base = {"psnr": 25.0 + noise(), "ssim": 0.8, "auc": 0.90 + noise(), "judge_auc": 0.9,
            "judge_high_quality_auc": 0.95, "judge_no_enhancement_auc": 0.8}
    test = {
        "gradprom_l0.1": {**base, "psnr": base["psnr"] + 0.0, "auc": base["auc"] + 0.02},
        "joint_l0.1": {**base, "psnr": base["psnr"] - 2.0, "ssim": 0.7},
        "enhance_only": {**base, "psnr": base["psnr"] + 0.2},
    }
    for row, values in test.items():
      if seed == 0 or row in ("gradprom_l0.1", "joint_l0.1", "enhance_only"):
        _write_run(tmp_path, row, seed, test=values,
                   val={"psnr": values["psnr"], "auc": values["auc"]},
                   probes=[("halves_agree", 1.0)] if row == "gradprom_l0.1" else ())
  # A λ whose validation AUC is higher but PSNR is 3 dB lower must not be chosen.
  _write_run(tmp_path, "gradprom_l1", 0, test={"psnr": 0.0, "auc": 0.0},
             val={"psnr": 22.0, "auc": 0.99})
  _write_run(tmp_path, "joint_l1", 0, test={"psnr": 0.0, "auc": 0.0},
             val={"psnr": 21.0, "auc": 0.99})

  selection = report_module.select(tmp_path, "auc")
  assert selection["gradprom"] == 0.1 and selection["joint"] == 0.1
  assert selection["random_gate"] == {"task_weight": 0.1, "open_rate": 0.4}
  claims = report_module.report(tmp_path, "auc", "synthetic check")
  assert claims["1. GradProm ≥ joint on PSNR"]["verdict"] == "better"
  assert claims["1. GradProm ≥ joint on SSIM"]["verdict"] == "better"
  # 0.2 dB below enhancement-only is "close" (margin 0.5 dB) but not "better".
  assert claims["2. GradProm close to (≥ −0.5 dB) or better than enhancement-only on PSNR"][
      "verdict"] == "holds"
  assert claims["5. gate-open rate strictly between 0 and 1"]["verdict"] == "holds"
  assert claims["6. runs unchanged on this pairing"]["statistic"] == (
      "15 runs finished, 0 non-finite steps")
  report_text = (tmp_path / "report.md").read_text()
  assert "Holm" in report_text and (tmp_path / "plots" / "front_psnr_judge_auc.png").exists()
  # The judge's references bracket the rows: on the unenhanced input and on high-quality images.
  gradprom_row = next(line for line in report_text.splitlines()
                      if line.startswith("| gradprom (`gradprom_l0.1`)"))
  assert gradprom_row.endswith("| 0.8000 ± 0.0000 (5) | 0.9500 ± 0.0000 (5) |")
  table = report_module.claims_table([tmp_path])
  assert "synthetic check" in table and "**better**" in table


def test_collect_compresses_metrics_and_reports_read_them(tmp_path):
  workdir, destination = tmp_path / "workdir", tmp_path / "results"
  _write_run(workdir, "gradprom_l0.1", 0, val={"psnr": 25.0, "auc": 0.9}, test={"psnr": 24.0})
  (workdir / "joint_l1" / "seed_0").mkdir(parents=True)   # unfinished: no results.json
  assert evidence.collect(workdir, destination) == 1
  copied = destination / "gradprom_l0.1" / "seed_0"
  assert (copied / "metrics.jsonl.gz").exists() and not (copied / "metrics.jsonl").exists()
  runs = evidence.load_runs(destination)
  assert runs["gradprom_l0.1", 0].final_validation()["psnr"] == 25.0
  assert runs["gradprom_l0.1", 0].results["psnr"] == 24.0


def test_paired_side_study_against_a_reference_row(tmp_path):
  report_module = _load_report_module()
  rng = np.random.default_rng(2)
  for seed in range(5):
    base = 25.0 + float(rng.normal(0, 0.5))   # shared by the seed's rows: the pairing removes it
    _write_run(tmp_path, "gp_hard", seed, test={"psnr": base + 0.3, "auc": 0.9}, val={},
               gate_rate=0.5, probes=[("halves_agree", 0.0)])
    _write_run(tmp_path, "gp_ema", seed, test={"psnr": base + float(rng.normal(0, 0.01)),
                                               "auc": 0.9}, val={}, gate_rate=0.2)
  text = report_module.paired(tmp_path, "gp_hard", ["psnr", "auc"], "gate study")
  assert (tmp_path / "paired.md").read_text() == text
  row = next(line for line in text.splitlines() if line.startswith("| gp_hard − gp_ema | psnr"))
  assert "+0.3" in row and row.endswith("| yes |")   # significant despite 0.5 dB seed noise
  assert "| `gp_ema` |" in text and "0.200" in text and "0.000" in text   # rate, agreement
  with pytest.raises(SystemExit, match="no finished run of row 'missing'"):
    report_module.paired(tmp_path, "missing", ["psnr"], "x")
  # Only the named rows are compared (a study's chosen rows, not its whole sweep).
  _write_run(tmp_path, "joint_l1", 0, test={"psnr": 20.0, "auc": 0.5}, val={})
  only = report_module.paired(tmp_path, "gp_hard", ["psnr"], "x", filename="only.md",
                              only_rows=["gp_ema"], shown=["auc"])
  assert "joint_l1" not in only and "over the 1 comparisons" in only
  assert "| row | psnr | auc |" in only and "| auc |" not in only.split("## Paired")[1]
  assert (tmp_path / "only.md").exists()


def test_results_report_shows_side_studies_after_the_settings(tmp_path):
  spec = importlib.util.spec_from_file_location(
      "results_report", REPORT_SCRIPT.parent / "results_report.py")
  results_report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(results_report)
  (tmp_path / "PROTOCOL.md").write_text("# Protocol\n")
  study = tmp_path / "gate_study"
  study.mkdir()
  (study / "paired.md").write_text("# gate study\n\n## Test metrics\n| row |\n")
  (study / "reading.md").write_text("The moving average does not help.")
  text = results_report.protocol_section(tmp_path)
  # A protocol with no claims-bearing setting: its studies are its experiments.
  assert "### Experiment: gate_study" in text and "**Reading.** The moving average" in text
  assert "claims" not in text.split("\n")[0]
  assert "#### gate study" in text and "##### Test metrics" in text   # headings shifted under it


def test_paired_reads_a_metric_under_either_name_and_skips_rows_without_it(tmp_path):
  report_module = _load_report_module()
  for seed in range(3):
    _write_run(tmp_path, "multi", seed, test={"psnr": 25.0 + seed, "dice/segmentation": 0.8,
                                              "accuracy/classification": 0.7}, val={})
    _write_run(tmp_path, "seg_only", seed, test={"psnr": 24.0 + seed, "dice": 0.75}, val={})
  text = report_module.paired(tmp_path, "multi", ["psnr", "dice/segmentation|dice",
                                                  "accuracy/classification|accuracy"], "tasks")
  assert "| multi − seg_only | dice/segmentation or dice | +0.0500" in text
  assert "accuracy/classification or accuracy | " not in text.split("## Paired")[1]   # not measured
  assert "over the 2 comparisons" in text


def _write_probe_run(directory, batch, agreements):
  run = directory / f"gp_batch{batch}" / "seed_0"
  run.mkdir(parents=True)
  (run / "results.json").write_text(json.dumps({"seed": 0}))
  records = [{"step": 10 * (i + 1), "kind": "train", "time": 0.0,
              "gate_probe/halves_agree": float(a), "gate_probe/cosine_full": 0.1 * (i + 1)}
             for i, a in enumerate(agreements)]
  (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_gate_reliability_table_tests_each_setting_and_the_pool_against_a_coin_flip(tmp_path):
  report_module = _load_report_module()
  first, second, unprobed = tmp_path / "a", tmp_path / "b", tmp_path / "c"
  for directory, name in ((first, "setting A"), (second, "setting B"), (unprobed, "setting C")):
    directory.mkdir()
    (directory / "claims.json").write_text(json.dumps({"setting": name, "claims": {}}))
  _write_probe_run(first, 8, [1] * 18 + [0] * 2)
  _write_probe_run(first, 32, [1, 0] * 5)
  _write_probe_run(second, 8, [1, 0] * 5)
  table = report_module.gate_reliability_table([first, second, unprobed])
  lines = table.splitlines()
  row = next(line for line in lines if line.startswith("| setting A | 8 |"))
  assert f"| 18/20 = 0.900 | {stats.binomtest(18, 20).pvalue:.3g} |" in row
  assert row.endswith(f"| {np.median(0.1 * np.arange(1, 21)):.3f} |")
  assert "| setting A | 32 | 5/10 = 0.500 | 1 |" in table
  assert not any(line.startswith("| setting C") for line in lines)
  pooled = next(line for line in lines if line.startswith("| pooled") and "| 8 |" in line)
  assert f"| 23/30 = 0.767 | {stats.binomtest(23, 30).pvalue:.3g} |" in pooled
  assert report_module.gate_reliability_table([unprobed]) == ""
