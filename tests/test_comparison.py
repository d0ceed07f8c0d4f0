"""Tests of the comparison tool: planning, skipping finished runs, aggregation, tables and plots.

The fast tests fake the runs (results.json + metrics.jsonl + config.json written here, or a stand-in
main script); the slow test runs experiments/compare.py end to end on the smoke config.
"""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments.tools import comparison
from gradprom_jax.training.metric_logging import METRICS_FILENAME

REPO = Path(__file__).resolve().parents[1]
SMOKE_ARGS = ["--config=configs/default.py:smoke"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
  monkeypatch.chdir(REPO)   # config files are given relative to the repository


def _fake_results(row: str, seed: int, steps: int = 6) -> dict:
  rng = np.random.default_rng([sum(map(ord, row)), seed])
  values = {"psnr": 25 + rng.normal(), "ssim": 0.7 + 0.01 * rng.normal(),
            "dice": 0.6 + 0.05 * rng.normal(), "iou": 0.45 + 0.05 * rng.normal()}
  results = dict(values)
  results.update({f"no_enhancement_{k}": v - 1.0 for k, v in values.items()})
  results.update({f"hq_input_{k}": v + 0.1 for k, v in values.items()
                  if k not in ("psnr", "ssim")})
  results.update(method=row, seed=seed, num_train_steps=steps, nonfinite_steps=0)
  return results


def _write_fake_run(run: comparison.PlannedRun, *, gradprom: bool, steps: int = 6) -> dict:
  """A finished run's files, config.json included (so it matches the planned config)."""
  run.workdir.mkdir(parents=True)
  config = comparison.run_config(SMOKE_ARGS, run)
  (run.workdir / "config.json").write_text(json.dumps(config.to_dict()))
  results = _fake_results(run.row.name, run.seed, steps)
  (run.workdir / "results.json").write_text(json.dumps(results))
  records = []
  for step in range(2, steps + 1, 2):
    train = {"step": step, "kind": "train", "enhancement_loss": 1.0 / step}
    if gradprom:
      train.update(cosine=math.sin(step + run.seed), gate=float(step % 4 == 0),
                   gate_open_rate=0.5)
    records.append(train)
    if step % 4 == 0:
      records.append({"step": step, "kind": "val", "psnr": 20.0 + step, "dice": 0.1 * step,
                      "no_enhancement_psnr": 19.0})
  (run.workdir / METRICS_FILENAME).write_text("".join(json.dumps(r) + "\n" for r in records))
  Image.fromarray(np.full((20, 40, 3), 128, np.uint8)).save(run.workdir / "samples.png")
  return results


def test_parse_variant_rejects_bad_specs():
  assert comparison.parse_variant("tau:gradprom.threshold=0.1,gradprom.mode=soft").overrides == (
      ("gradprom.threshold", "0.1"), ("gradprom.mode", "soft"))
  for bad in ("no_colon", "name:", "name:novalue", "bad name:x=1", "x:method=sgd", "x:seed=3"):
    with pytest.raises(ValueError, match="variant|Variant"):
      comparison.parse_variant(bad)
  with pytest.raises(ValueError, match="used twice"):
    comparison.make_rows(["gradprom"], ["gradprom:gradprom.mode=soft"])
  with pytest.raises(ValueError, match="Unknown method"):
    comparison.make_rows(["gradprom", "adam"])


def test_run_config_applies_method_seed_and_variant_and_names_bad_keys(tmp_path):
  rows = comparison.make_rows(["joint"], ["soft:gradprom.mode=soft,gradprom.threshold=0.2"])
  runs = comparison.plan_runs(rows, [3], tmp_path)
  joint, soft = (comparison.run_config(SMOKE_ARGS, run) for run in runs)
  assert (joint.method, joint.seed, joint.gradprom.mode) == ("joint", 3, "hard")
  assert (soft.method, soft.gradprom.mode, soft.gradprom.threshold) == ("gradprom", "soft", 0.2)
  bad = comparison.plan_runs(comparison.make_rows([], ["x:gradprom.nonsense=1"]), [0], tmp_path)
  with pytest.raises(ValueError, match="x seed 0"):
    comparison.run_config(SMOKE_ARGS, bad[0])


def test_forwarded_overrides_parse_back_to_the_same_config():
  args = [*SMOKE_ARGS, "--config.data.image_size=(16, 24)", "--config.overwrite=true",
          "--config.optim.enhancer_lr=3e-05", "--config.task.degradation=downsample(scale=2)"]
  config = comparison.load_config(args)
  formatted = [comparison.format_override(k, v) for k, v in (
      ("data.image_size", config.data.image_size), ("overwrite", config.overwrite),
      ("optim.enhancer_lr", config.optim.enhancer_lr),
      ("task.degradation", config.task.degradation))]
  assert comparison.load_config([*SMOKE_ARGS, *formatted]).to_dict() == config.to_dict()


def test_report_numbers_equal_mean_and_std_of_the_runs(tmp_path):
  rows = comparison.make_rows(["gradprom", "joint"], ["soft:gradprom.mode=soft"])
  runs = comparison.plan_runs(rows, [0, 1, 2], tmp_path)
  results = {run: _write_fake_run(run, gradprom=run.row.method == "gradprom") for run in runs}
  # An undefined value (nan AUC-like) is left out of the mean and of n.
  results[runs[0]]["iou"] = float("nan")
  (runs[0].workdir / "results.json").write_text(json.dumps(results[runs[0]]))

  comparison.report(tmp_path, runs, rows, command="compare.py ...", wall_seconds=3.0,
                    task_metric="dice", thresholds={"gradprom": 0.0, "soft": 0.0})

  with open(tmp_path / "summary.csv") as f:
    table = {line["row"]: line for line in csv.DictReader(f)}
  assert list(table) == ["gradprom", "joint", "soft", "no_enhancement", "hq_input"]
  for row in rows:
    for metric in ("psnr", "ssim", "dice", "iou"):
      values = np.array([results[r][metric] for r in runs if r.row == row])
      values = values[np.isfinite(values)]
      assert float(table[row.name][f"{metric}_mean"]) == pytest.approx(values.mean(), abs=1e-12)
      assert float(table[row.name][f"{metric}_std"]) == pytest.approx(values.std(ddof=1),
                                                                     abs=1e-12)
      assert int(table[row.name][f"{metric}_n"]) == values.size
  assert int(table["gradprom"]["iou_n"]) == 2
  no_enhancement = [r["no_enhancement_dice"] for r in results.values()]
  assert float(table["no_enhancement"]["dice_mean"]) == pytest.approx(np.mean(no_enhancement))
  assert int(table["no_enhancement"]["dice_n"]) == 9
  assert table["hq_input"]["psnr_n"] == "0"   # the target has no PSNR

  summary = (tmp_path / "summary.md").read_text()
  assert "| gradprom | " in summary and "| hq_input | " in summary
  assert "compare.py ..." in summary and "`soft`: method `gradprom`, `gradprom.mode=soft`" in summary
  # The geometry table: gradprom rows only (joint logged no cosine), medians of the logged cosines.
  geometry = summary.split("Gradient geometry", 1)[1]
  assert "| soft | " in geometry and "| joint | " not in geometry
  medians = [np.median([math.sin(step + seed) for step in (2, 4, 6)]) for seed in (0, 1, 2)]
  expected = f"| gradprom | 0.5000 ± 0.0000 (3) | {np.mean(medians):.4f} ± {np.std(medians, ddof=1):.4f} (3)"
  assert expected in geometry
  plots = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
  assert plots == ["cosine_hist_gradprom.png", "cosine_hist_soft.png", "final_psnr_vs_dice.png",
                   "gate_gradprom.png", "gate_soft.png", "samples_by_row.png", "val_dice.png",
                   "val_psnr.png"]
  assert Image.open(tmp_path / "plots" / "samples_by_row.png").size[1] > 3 * 20
  with open(tmp_path / "runs.csv") as f:
    assert len(list(csv.DictReader(f))) == 9


def test_finished_runs_are_skipped_and_a_changed_config_is_refused(tmp_path):
  runs = comparison.plan_runs(comparison.make_rows(["joint"]), [0, 1], tmp_path)
  for run in runs:
    _write_fake_run(run, gradprom=False)
  never_run = tmp_path / "must_not_run.py"   # the test fails if a subprocess is started
  never_run.write_text("raise SystemExit(13)")
  lines = []
  started = time.time()
  assert comparison.run_all(runs, SMOKE_ARGS, main_script=never_run, print_fn=lambda *a, **k:
                            lines.append(a[0])) == []
  assert time.time() - started < 10
  assert "2 finished (skipped)" in lines[0] and len(lines) == 1

  # A longer run is "partial": main would extend it from its last checkpoint.
  longer = [*SMOKE_ARGS, "--config.num_train_steps=8"]
  assert comparison.run_status(runs[0], comparison.run_config(longer, runs[0])) == "partial"
  shorter = [*SMOKE_ARGS, "--config.num_train_steps=4"]
  with pytest.raises(ValueError, match="finished 6 steps, more than the planned 4"):
    comparison.run_status(runs[0], comparison.run_config(shorter, runs[0]))
  with pytest.raises(ValueError, match="task_weight: 1.0 -> 0.5"):
    comparison.run_all(runs, [*SMOKE_ARGS, "--config.task_weight=0.5"], main_script=never_run)


def test_failed_run_is_reported_and_the_sweep_goes_on(tmp_path):
  fake_main = tmp_path / "fake_main.py"
  fake_main.write_text(
      "import json, sys, pathlib\n"
      "args = dict(a.split('=', 1) for a in sys.argv[1:])\n"
      "if args['--config.seed'] == '1':\n"
      "  print('boom: out of memory'); sys.exit(3)\n"
      "workdir = pathlib.Path(args['--workdir'])\n"
      "(workdir / 'results.json').write_text(json.dumps({'psnr': 1.0, 'num_train_steps': 6}))\n")
  runs = comparison.plan_runs(comparison.make_rows(["joint"]), [0, 1, 2], tmp_path / "cmp")
  lines = []
  failed = comparison.run_all(runs, SMOKE_ARGS, main_script=fake_main,
                              print_fn=lambda *a, **k: lines.append(a[0]))
  assert failed == ["joint seed 1"]
  assert (runs[2].workdir / "results.json").exists()
  assert any("FAILED (exit code 3)" in line and "boom: out of memory" in line for line in lines)
  # One line per finished run (the last with its ETA), then the failures with their logs.
  assert any(line.startswith("[3/3]") for line in lines) and "ETA" in lines[-2]
  assert lines[-1].startswith("1 run(s) failed")
  info = json.loads((runs[1].workdir / comparison.RUN_INFO_FILENAME).read_text())
  assert info["attempts"][0]["returncode"] == 3 and "--config.seed=1" in info["command"]


@pytest.mark.slow
def test_compare_cli_end_to_end_on_the_smoke_config(tmp_path):
  workdir = tmp_path / "cmp"
  command = [sys.executable, str(REPO / "experiments" / "compare.py"),
             "--config", str(REPO / "configs" / "default.py") + ":smoke",
             f"--config.data.data_dir={tmp_path / 'tfds'}", "--methods=gradprom,joint",
             "--seeds=0,1", f"--workdir={workdir}"]
  first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
  assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
  assert "[4/4]" in first.stdout
  for name in ("summary.md", "summary.csv", "runs.csv", "plots/val_psnr.png",
               "plots/final_psnr_vs_dice.png", "plots/cosine_hist_gradprom.png",
               "plots/gate_gradprom.png", "plots/samples_by_row.png"):
    assert (workdir / name).exists(), name

  started = time.time()
  second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "4 finished (skipped)" in second.stdout and "[1/" not in second.stdout
  assert time.time() - started < 60

  with open(workdir / "summary.csv") as f:
    table = {line["row"]: line for line in csv.DictReader(f)}
  for method in ("gradprom", "joint"):
    results = [json.loads((workdir / method / f"seed_{s}" / "results.json").read_text())
               for s in (0, 1)]
    for metric in ("psnr", "ssim", "dice", "iou"):
      values = np.array([r[metric] for r in results])
      assert float(table[method][f"{metric}_mean"]) == pytest.approx(values.mean())
      assert float(table[method][f"{metric}_std"]) == pytest.approx(values.std(ddof=1))


def test_runs_share_the_compilation_cache_only_when_asked(tmp_path):
  fake_main = tmp_path / "fake_main.py"
  fake_main.write_text(
      "import json, os, sys, pathlib\n"
      "args = dict(a.split('=', 1) for a in sys.argv[1:])\n"
      "workdir = pathlib.Path(args['--workdir'])\n"
      "(workdir / 'cache.txt').write_text(os.environ.get('JAX_COMPILATION_CACHE_DIR', 'none'))\n"
      "(workdir / 'results.json').write_text(json.dumps({'psnr': 1.0, 'num_train_steps': 6}))\n")
  runs = comparison.plan_runs(comparison.make_rows(["joint"]), [0], tmp_path / "cmp")
  comparison.execute_run(runs[0], SMOKE_ARGS, main_script=fake_main,
                         cache_dir=tmp_path / "cache")
  assert (runs[0].workdir / "cache.txt").read_text() == str((tmp_path / "cache").resolve())
  comparison.execute_run(runs[0], SMOKE_ARGS, main_script=fake_main)
  assert (runs[0].workdir / "cache.txt").read_text() == os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", "none")


def test_runs_call_the_training_entry_point_as_a_module(tmp_path):
  """The default command names no file of the repository, so an installed package finds it."""
  fake_python = tmp_path / "python"
  fake_python.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/argv.txt\"\n")
  fake_python.chmod(0o755)
  runs = comparison.plan_runs(comparison.make_rows(["joint"]), [0], tmp_path / "cmp")
  returncode, _ = comparison.execute_run(runs[0], SMOKE_ARGS, python=str(fake_python))
  argv = (tmp_path / "argv.txt").read_text().splitlines()
  assert returncode == 0
  assert argv[:2] == ["-m", "gradprom_jax.training.main"] == ["-m", comparison.MAIN_MODULE]
  assert argv[2:] == [*SMOKE_ARGS, "--config.method=joint", "--config.seed=0",
                      f"--workdir={runs[0].workdir}"]


def test_results_report_stitches_overview_sweeps_summaries_and_readings(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("results_report",
                                                REPO / "experiments" / "results_report.py")
  results_report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(results_report)
  (tmp_path / "overview.md").write_text("# Results\n\nOverview text.\n")
  sweep = tmp_path / "long"
  (sweep / "b_setting").mkdir(parents=True)
  (sweep / "a_setting").mkdir()
  (sweep / "no_summary").mkdir()
  (sweep / "about.md").write_text("# Long runs\n\n## Detail\n")
  for name in ("a_setting", "b_setting"):
    (sweep / name / "summary.md").write_text(
        f"# Comparison\n\n| row | psnr |\n\nPlots: [p.png](plots/p.png) {name}\n")
  (sweep / "a_setting" / "reading.md").write_text("GradProm wins.\n")
  (tmp_path / "header.md").write_text("# All results\n")
  protocol = tmp_path / "protocol"
  (protocol / "setting").mkdir(parents=True)
  (protocol / "PROTOCOL.md").write_text("fixed before the runs\n")
  (protocol / "setting" / "claims.json").write_text(json.dumps(
      {"setting": "Setting A", "claims": {"1. claim": {"verdict": "holds", "statistic": "+1 [0, 2]"}}}))
  (protocol / "setting" / "report.md").write_text("# Setting A\n\n![f](plots/f.png)\n")
  (protocol / "setting" / "reading.md").write_text("Holds here.\n")
  (protocol / "cut_off").mkdir()
  (protocol / "cut_off" / "lambda_selection.md").write_text("# λ chosen\n\n| gradprom | 0.1 |\n")
  results_report.main([str(protocol), str(sweep)])
  out = capsys.readouterr().out
  # The header, then the protocol's claims table and its setting, then the earlier sweeps.
  assert out.startswith("# All results\n")
  assert out.index("| 1. claim | **holds**: +1 [0, 2] |") < out.index("**Reading.** Holds here.")
  assert "#### Setting A" in out and f"]({protocol}/setting/plots/f.png)" in out
  cut_off = out.index("### cut_off: λ chosen, seed runs not yet made")
  assert out.index("Holds here.") < cut_off < out.index("## Results\n\nOverview text.")
  assert "| cut_off" not in out   # not a column of the claims table
  assert "### Long runs" in out and "#### Detail" in out and "# Comparison" not in out
  assert out.index("#### a_setting") < out.index("**Reading.** GradProm wins.") < out.index(
      "#### b_setting")
  assert f"]({sweep}/a_setting/plots/p.png)" in out and "no_summary" not in out


def test_judge_columns_read_the_judge_on_each_rows_images(tmp_path):
  rows = comparison.make_rows(["gradprom", "two_stage"])
  runs = comparison.plan_runs(rows, [0, 1], tmp_path)
  results = {}
  for index, run in enumerate(runs):
    result = _write_fake_run(run, gradprom=False)
    result.update(judge_dice=0.5 + 0.01 * index, judge_no_enhancement_dice=0.4,
                  judge_high_quality_dice=0.9)
    (run.workdir / "results.json").write_text(json.dumps(result))
    results[run] = result
  metrics, table = comparison.summarize(comparison.read_results(runs), rows)
  assert metrics[-1] == "judge_dice" and "high_quality_dice" not in metrics
  assert table["gradprom"]["judge_dice"].mean == pytest.approx(0.505)
  assert table["two_stage"]["judge_dice"].mean == pytest.approx(0.525)
  assert table["no_enhancement"]["judge_dice"].mean == pytest.approx(0.4)
  assert table["hq_input"]["judge_dice"].mean == pytest.approx(0.9)
  assert table["hq_input"]["dice"].n == 4


