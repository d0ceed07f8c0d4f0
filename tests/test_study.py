"""The study protocol (experiments/study.py): its plan, the worker pool that runs it, and one tiny study
end to end."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from experiments.tools import comparison, study, worker_pool
from gradprom_jax.training.metric_logging import METRICS_FILENAME

REPO = Path(__file__).resolve().parents[1]
SMOKE_ARGS = [f"--config={REPO / 'configs' / 'default.py'}:smoke"]
OPTIONS = study.StudyOptions(seeds=(0, 1), lambdas=(0.01, 1.0), methods=("joint", "gradprom"))


# --------------------------------------------------------------------------- planning


def test_plan_lists_every_stage_and_row_of_the_flags():
  stages = dict(study.planned_stages(OPTIONS))
  assert list(stages) == list(study.STAGES)
  assert stages["grid"] == ["enhance_only", "joint_l0.01", "joint_l1", "gradprom_l0.01",
                            "gradprom_l1"]
  assert stages["random_gate"] == ["random_gate_l0.01", "random_gate_l1"]
  assert stages["gate_probes"] == ["gp_batch8", "gp_batch32"]
  # No GradProm, no gate to imitate or probe.
  joint_only = dict(study.planned_stages(study.StudyOptions(methods=("joint",))))
  assert joint_only["random_gate"] == [] and joint_only["gate_probes"] == []


def test_finetuned_regime_adds_two_stage_and_unfreezes_the_recognizer(tmp_path):
  finetuned = study.StudyOptions(regime="finetuned", seeds=(0,), lambdas=(0.1,),
                                 methods=("gradprom",))
  assert [r.name for r in study.grid_rows(finetuned)][:2] == ["enhance_only", "two_stage"]
  assert "two_stage" not in [r.name for r in study.grid_rows(OPTIONS)]
  args = study.regime_config_args(SMOKE_ARGS, finetuned, tmp_path)
  assert "--config.recognizer.frozen=false" in args
  config = comparison.run_config(args, study.grid_runs(finetuned, tmp_path)[0])
  assert config.recognizer.init_from.endswith("recognizers/recognizer_only/seed_{seed}")
  assert config.judge.workdir.endswith("recognizers/recognizer_only/seed_100")
  assert not config.recognizer.frozen and config.num_train_steps == 300


def test_grid_rows_set_method_and_weight_and_sweep_variants():
  options = study.StudyOptions(lambdas=(0.1,), methods=("gp_norm", "pcgrad"),
                               variants=("soft:gradprom.mode=soft",))
  rows = {r.name: r for r in study.grid_rows(options)}
  assert rows["gp_norm_l0.1"].method == "gradprom"
  assert dict(rows["gp_norm_l0.1"].overrides) == {"gradprom.task_scale": "enhancement_norm",
                                                  "task_weight": "0.1"}
  assert rows["pcgrad_l0.1"].method == "pcgrad"
  assert dict(rows["soft_l0.1"].overrides) == {"gradprom.mode": "soft", "task_weight": "0.1"}
  with pytest.raises(ValueError, match="sweeps it"):
    study.variant_rows("x:task_weight=2", [0.1])
  with pytest.raises(ValueError, match="judge"):
    study.StudyOptions(seeds=(0, 100))


def test_user_overrides_win_over_the_study_schedule(tmp_path):
  args = study.regime_config_args([*SMOKE_ARGS, "--config.num_train_steps=7"], OPTIONS, tmp_path)
  config = comparison.run_config(args, study.grid_runs(OPTIONS, tmp_path)[0])
  assert config.num_train_steps == 7 and config.optim.warmup_steps == 15
  recognizer_args, runs = study.recognizer_stage(SMOKE_ARGS, OPTIONS, tmp_path)
  assert [r.seed for r in runs] == [0, 1, 100]
  assert comparison.run_config(recognizer_args, runs[0]).num_train_steps == 600


def _write_gradprom_log(run_dir: Path, rates: list[float], finished: bool = True) -> None:
  run_dir.mkdir(parents=True)
  records = [{"kind": "train", "step": i, "gate_open_rate": r} for i, r in enumerate(rates)]
  records.insert(1, {"kind": "val", "step": 1, "psnr": 20.0})
  (run_dir / METRICS_FILENAME).write_text("".join(json.dumps(r) + "\n" for r in records))
  if finished:
    (run_dir / "results.json").write_text("{}")


def test_random_gate_runs_take_the_open_rate_of_their_own_gradprom_run(tmp_path):
  grid = study.grid_dir(tmp_path, OPTIONS)
  _write_gradprom_log(grid / "gradprom_l0.01" / "seed_0", [0.9, 0.61234])
  _write_gradprom_log(grid / "gradprom_l0.01" / "seed_1", [0.2, 0.25])
  _write_gradprom_log(grid / "gradprom_l1" / "seed_0", [0.4])
  # Stopped mid-way (its last rate is not its final one): its control waits for it.
  _write_gradprom_log(grid / "gradprom_l1" / "seed_1", [0.3], finished=False)
  runs, missing = study.random_gate_runs(OPTIONS, tmp_path)
  rates = {(r.row.name, r.seed): dict(r.row.overrides) for r in runs}
  assert rates == {
      ("random_gate_l0.01", 0): {"task_weight": "0.01", "random_gate.open_rate": "0.612"},
      ("random_gate_l0.01", 1): {"task_weight": "0.01", "random_gate.open_rate": "0.25"},
      ("random_gate_l1", 0): {"task_weight": "1", "random_gate.open_rate": "0.4"}}
  assert all(r.row.method == "random_gate" and r.workdir == grid / r.row.name / f"seed_{r.seed}"
             for r in runs)
  assert missing == ["gradprom_l1 seed 1"]   # that GradProm run has not finished
  config = comparison.run_config(study.regime_config_args(SMOKE_ARGS, OPTIONS, tmp_path), runs[0])
  assert config.method == "random_gate" and config.random_gate.open_rate == pytest.approx(0.612)


def test_probes_default_to_gradprom_lambda_chosen_on_validation(tmp_path):
  grid = study.grid_dir(tmp_path, OPTIONS)
  validation = {"enhance_only": (25.0, 0.5), "gradprom_l0.01": (24.9, 0.60),
                "gradprom_l1": (23.0, 0.90)}   # λ = 1 loses 2 dB: not admissible
  for row, (psnr, dice) in validation.items():
    run_dir = grid / row / "seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text("{}")
    (run_dir / METRICS_FILENAME).write_text(
        json.dumps({"kind": "val", "step": 6, "psnr": psnr, "dice": dice}) + "\n")
  assert study.chosen_gradprom_lambda(OPTIONS, tmp_path, "dice") == 0.01
  probes = study.probe_runs(OPTIONS, tmp_path, 0.01)
  assert [(r.row.name, r.seed) for r in probes] == [("gp_batch8", 0), ("gp_batch32", 0)]
  assert dict(probes[0].row.overrides) == {"task_weight": "0.01", "batch_size": "8",
                                           "gate_reliability_every": "10"}
  assert study.chosen_gradprom_lambda(OPTIONS, tmp_path / "empty", "dice") is None
  every_3 = study.probe_runs(dataclasses.replace(OPTIONS, probe_every=3), tmp_path, 0.01)
  assert dict(every_3[0].row.overrides)["gate_reliability_every"] == "3"   # 100 probes in 300


def _fake_run_all(calls: list, validation: dict):
  """comparison.run_all's stand-in: records each stage's runs and 'finishes' them with the given
  validation (PSNR, task metric) per row (GradProm rows also log a gate-open rate)."""
  def run_all(runs, config_args, **kwargs):
    calls.append([(r.row.name, r.seed) for r in runs])
    for run in runs:
      run.workdir.mkdir(parents=True, exist_ok=True)
      psnr, task = validation.get(run.row.name.rsplit("_l", 1)[0] if "_l" in run.row.name
                                  else run.row.name, (25.0, 0.5))
      weight = dict(run.row.overrides).get("task_weight", "0")
      psnr, task = (psnr(float(weight)), task(float(weight))) if callable(psnr) else (psnr, task)
      records = [{"kind": "train", "step": 1, "gate_open_rate": 0.5},
                 {"kind": "val", "step": 6, "psnr": psnr, "balanced_accuracy": task}]
      (run.workdir / METRICS_FILENAME).write_text("".join(json.dumps(r) + "\n" for r in records))
      (run.workdir / "results.json").write_text("{}")
    return []
  return run_all


def test_grid_runs_seed_by_seed_and_extends_lambda_on_the_first_seed_only(tmp_path, monkeypatch):
  # Every method loses 0.2 dB at the smallest λ and gains only 0.05 at the largest: both ends added.
  validation = {"enhance_only": (25.0, 0.5),
                **{m: (lambda w: 25.0 - (0.2 if w <= 0.01 else 1.0), lambda w: 0.55)
                   for m in ("joint", "gradprom")}}
  calls = []
  monkeypatch.setattr(comparison, "run_all", _fake_run_all(calls, validation))
  monkeypatch.setattr(study, "write_reports", lambda *a, **k: [])
  options = dataclasses.replace(OPTIONS, extend_grid=True, probe_lambda=0.01)
  study.run_study(SMOKE_ARGS, options, tmp_path, task_metrics=["balanced_accuracy"], setting="S",
                  report_script="unused", task_gains=["balanced_accuracy=0.05,0.1"],
                  print_fn=lambda *a, **k: None)
  seeds_per_stage = [sorted({seed for _, seed in stage}) for stage in calls]
  # recognisers; seed 0 grid, random gate, the added λ's grid and random gate; seed 1; probes.
  assert seeds_per_stage == [[0, 1, 100], [0], [0], [0], [0], [1], [1], [0]]
  added = {name for name, _ in calls[3]}
  assert added == {"enhance_only", *(f"{m}_l{w:g}" for m in ("joint", "gradprom")
                                     for w in (0.003, 0.001, 3, 10))}
  assert {name for name, _ in calls[5]} >= {"joint_l0.001", "gradprom_l10"}   # seed 1: every λ
  decision = json.loads((study.grid_dir(tmp_path, options) / study.EXTENSION_FILENAME).read_text())
  assert decision["added"] == [0.003, 0.001, 3.0, 10.0]
  assert decision["best_task_gain_at_largest_lambda"] == pytest.approx(0.05)

  # A grid that brackets the trade-off is left as it is.
  calls.clear()
  validation = {"enhance_only": (25.0, 0.5),
                "joint": (lambda w: 25.0 - w, lambda w: 0.5 + 0.3 * w),
                "gradprom": (lambda w: 25.0 - w, lambda w: 0.5)}
  monkeypatch.setattr(comparison, "run_all", _fake_run_all(calls, validation))
  study.run_study(SMOKE_ARGS, options, tmp_path / "bracketed", task_metrics=["balanced_accuracy"],
                  setting="S", report_script="unused", task_gains=["balanced_accuracy=0.05,0.1"],
                  print_fn=lambda *a, **k: None)
  assert len(calls) == 6 and json.loads(
      (tmp_path / "bracketed" / "frozen" / study.EXTENSION_FILENAME).read_text())["added"] == []
  with pytest.raises(study.StudyError, match="task_gains"):
    study.grid_extension(options, tmp_path / "none", task_metric="dice", task_gain=None)


def test_reports_forward_the_task_gains_to_the_fronts(tmp_path):
  script = tmp_path / "recording_report.py"   # records its arguments, writes nothing
  script.write_text("import json, sys\nopen(sys.argv[0] + '.args', 'a').write("
                    "json.dumps(sys.argv[1:]) + '\\n')\n")
  study.write_reports(tmp_path, task_metrics=["auc", "balanced_accuracy"], setting="S",
                      report_script=script, gradprom=False,
                      task_gains=["auc=0.005,0.01", "balanced_accuracy=0.05"])
  (fronts_call,) = [json.loads(line) for line in Path(f"{script}.args").read_text().splitlines()]
  assert fronts_call == ["fronts", str(tmp_path), "--task_metric", "auc", "--task_metric",
                         "balanced_accuracy", "--task_gains", "auc=0.005,0.01", "--task_gains",
                         "balanced_accuracy=0.05", "--setting", "S"]


def test_reports_say_when_the_fronts_subcommand_is_missing(tmp_path):
  script = tmp_path / "old_report.py"   # a report script without `fronts`
  script.write_text("import argparse\np = argparse.ArgumentParser()\n"
                    "s = p.add_subparsers(dest='c', required=True)\n"
                    "for n in ('select', 'report'):\n  a = s.add_parser(n)\n"
                    "  a.add_argument('d'); a.add_argument('--task_metric'); "
                    "a.add_argument('--setting')\np.parse_args()\n")
  lines = study.write_reports(tmp_path, task_metrics=["auc", "balanced_accuracy"], setting="S",
                              report_script=script, gradprom=True)
  assert lines[0].startswith("fronts: UNAVAILABLE") and "fronts.md not written" in lines[0]
  assert lines[1:] == [f"select: wrote {tmp_path / 'lambda_selection.md'}",
                       f"report: wrote {tmp_path / 'report.md'}"]


def test_cli_prints_the_plan_without_running(tmp_path):
  result = subprocess.run(
      [sys.executable, str(REPO / "experiments" / "study.py"), *SMOKE_ARGS, "--norun",
       f"--workdir={tmp_path / 'study'}", "--regime=finetuned", "--lambdas=0.1",
       "--methods=gradprom,gp_norm", "--variant=soft:gradprom.mode=soft"],
      capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert ("grid: enhance_only, two_stage, gradprom_l0.1, gp_norm_l0.1, soft_l0.1"
          in result.stdout.splitlines())
  assert not (tmp_path / "study").exists()


# --------------------------------------------------------------------------- the worker pool


def test_pool_runs_at_most_n_at_once_and_collects_failures():
  running, most = [0], [0]
  lock = threading.Lock()
  environments = {}

  def runner(job, slot):
    with lock:
      running[0] += 1
      most[0] = max(most[0], running[0])
    time.sleep(0.05)
    environments[job] = slot.job_environment({"XLA_FLAGS": "--x=1"})["XLA_FLAGS"]
    with lock:
      running[0] -= 1
    if job == 3:
      raise RuntimeError("boom")
    return worker_pool.Outcome(job, job != 5, 0.05, "exit code 1")

  lines = []
  failures = worker_pool.run_in_parallel(list(range(8)), runner,
                                         slots=worker_pool.worker_slots(3, cpus=[0, 1, 2]),
                                         print_fn=lambda *a, **k: lines.append(a[0]))
  assert most[0] == 3
  assert sorted((f.job, f.message) for f in failures) == [(3, "RuntimeError: boom"),
                                                          (5, "exit code 1")]
  assert len(lines) == 8 and lines[-1].startswith("[8/8]") and "ETA" in lines[-1]
  assert all(flags == "--x=1 " + worker_pool.SINGLE_THREAD_XLA_FLAGS
             for flags in environments.values())


def test_one_worker_keeps_default_threads_and_every_core():
  (slot,) = worker_pool.worker_slots(1)
  assert slot.cpus == () and slot.job_environment({"A": "1"}) == {"A": "1"}
  assert [s.cpus for s in worker_pool.worker_slots(3, cpus=[0, 1])] == [(0,), (1,), (0,)]
  with pytest.raises(ValueError):
    worker_pool.worker_slots(0)


FAKE_MAIN = """\
import json, os, pathlib, sys, time
args = dict(a.split('=', 1) for a in sys.argv[1:] if '=' in a)
workdir = pathlib.Path(args['--workdir'])
started = time.time()
# The entry point stores the run's config (the test wrote it beside this script).
stored = pathlib.Path(__file__).parent / f"config_{args['--config.seed']}.json"
(workdir / 'config.json').write_text(stored.read_text())
time.sleep(1.0)
if args['--config.seed'] == '2':
  sys.exit(5)
(workdir / 'results.json').write_text(json.dumps({
    'num_train_steps': 6, 'started': started, 'ended': time.time(),
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'cpus': sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []}))
"""


def test_run_all_with_two_workers_pins_runs_and_resumes(tmp_path):
  fake_main = tmp_path / "fake_main.py"
  fake_main.write_text(FAKE_MAIN)
  runs = comparison.plan_runs(comparison.make_rows(["joint"]), [0, 1, 2, 3, 4], tmp_path / "cmp")
  for run in runs:
    config = json.dumps(comparison.run_config(SMOKE_ARGS, run).to_dict())
    (tmp_path / f"config_{run.seed}.json").write_text(config)
  # seed 4 finished before; seed 3 was killed mid-way (config.json, no results.json).
  for run in runs[3:]:
    run.workdir.mkdir(parents=True)
    (run.workdir / "config.json").write_text((tmp_path / f"config_{run.seed}.json").read_text())
  (runs[4].workdir / "results.json").write_text(json.dumps({"num_train_steps": 6}))
  lines = []
  failed = comparison.run_all(runs, SMOKE_ARGS, main_script=fake_main, workers=2,
                              print_fn=lambda *a, **k: lines.append(a[0]))
  assert failed == ["joint seed 2"]
  assert "1 finished (skipped), 1 to resume, 3 new" in lines[0]
  assert sum(line.startswith("[") for line in lines) == 4 and "joint seed 2 FAILED" in lines[-1]
  results = [json.loads((r.workdir / "results.json").read_text()) for r in runs[:2] + runs[3:4]]
  assert all(worker_pool.SINGLE_THREAD_XLA_FLAGS in r["xla_flags"] for r in results)
  if hasattr(os, "sched_setaffinity") and len(worker_pool.usable_cpus()) >= 2:
    assert all(len(r["cpus"]) == len(worker_pool.usable_cpus()) // 2 for r in results)
  # The first two ran side by side.
  first, second = results[0], results[1]
  assert first["started"] < second["ended"] and second["started"] < first["ended"]

  lines.clear()
  assert comparison.run_all(runs[:2] + runs[3:], SMOKE_ARGS, main_script=tmp_path / "absent.py",
                            workers=2, print_fn=lambda *a, **k: lines.append(a[0])) == []
  assert "4 finished (skipped)" in lines[0] and len(lines) == 1


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resumes(tmp_path):
  command = [sys.executable, str(REPO / "experiments" / "study.py"), *SMOKE_ARGS,
             f"--config.data.data_dir={tmp_path / 'tfds'}", f"--workdir={tmp_path / 'study'}",
             "--seeds=0", "--lambdas=0.1,1", "--methods=gradprom,joint", "--steps=6",
             "--recognizer_steps=6", "--probe_batches=4,8", "--workers=2"]
  first = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)
  assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
  frozen = tmp_path / "study" / "frozen"
  for row in ("enhance_only", "gradprom_l0.1", "joint_l1", "random_gate_l0.1", "random_gate_l1",
              "gp_batch4", "gp_batch8"):
    assert (frozen / row / "seed_0" / "results.json").exists(), row
  for seed in (0, 100):
    assert (tmp_path / "study" / "recognizers" / "recognizer_only" / f"seed_{seed}" /
            "results.json").exists()
  gate = json.loads((frozen / "random_gate_l1" / "seed_0" / "config.json").read_text())
  assert gate["random_gate"]["open_rate"] == study.gate_open_rate(frozen / "gradprom_l1" / "seed_0")
  assert (frozen / "report.md").exists() and (frozen / "study.md").exists()

  second = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, check=False)
  assert second.returncode == 0, second.stderr[-3000:]
  # Every stage (recognisers; seed 0's grid and random gates; the probes) finds its runs finished.
  planned = [line for line in second.stdout.splitlines() if "runs planned" in line]
  assert "[1/" not in second.stdout and len(planned) == 4, second.stdout[-3000:]
  assert all(", 0 to resume, 0 new;" in line for line in planned), planned
