"""The benchmark scripts run end to end in a tiny mode and end with the promised JSON line;
the memory table resumes."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REQUIRED_KEYS = ("gradprom_over_joint", "gradprom_over_bound", "naive_over_shared")


@pytest.mark.slow
def test_step_time_smoke_ends_with_json_of_the_required_ratios(tmp_path):
  # --devices 1 goes through the subprocess-per-device-count path as well as the benchmark itself.
  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, str(REPO / "benchmarks" / "step_time.py"), "--smoke", "--steps", "2",
             "--warmup", "1", "--pipeline_batches", "2", "--devices", "1", "--methods", "",
             "--data_dir", str(tmp_path / "tfds")]
  out = subprocess.run(command, env=env, cwd=tmp_path, check=True, capture_output=True, text=True,
                       timeout=600).stdout
  result = json.loads(out.strip().splitlines()[-1])
  for key in REQUIRED_KEYS:
    assert math.isfinite(result[key]) and result[key] > 0, (key, result[key])
  assert [run["num_devices"] for run in result["runs"]] == [1]
  assert set(result["step_ms"]) == {"joint", "gradprom", "gradprom_naive"}
  # GradProm pulls back through the enhancer once more than joint training: more convolutions.
  assert result["convolutions"]["gradprom"] > result["convolutions"]["joint"]
  assert all(ms > 0 for ms in result["step_ms"].values())
  # The naive step really runs a second enhancer forward (XLA did not merge it away).
  assert result["convolutions"]["gradprom_naive"] > result["convolutions"]["gradprom"]
  assert result["pipeline_images_per_s"] > 0


@pytest.mark.slow  # ~3 min on 2 shared cores: four compiles of the tiny step.
def test_accelerator_check_runs_on_cpu_and_ends_with_json(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable,
         "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  out = subprocess.run(["bash", str(REPO / "benchmarks" / "accelerator_check.sh")], env=env,
                       cwd=tmp_path, check=True, capture_output=True, text=True, timeout=900).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert result["platform"] == "cpu" and result["tiny"] is True
  assert {(r["dtype"], r["devices"]) for r in result["runs"]} == {("float32", 1), ("bfloat16", 1)}
  assert all(r["step_ms"] > 0 and r["loss_finite"] for r in result["runs"])
  assert result["bfloat16_speedup_1_device"] > 0
  assert result["input_pipeline"]["images_per_s"]["0"] > 0


@pytest.mark.slow  # ~15-60 s: the smoke step compiled once, then 3 intervals of 2 steps.
def test_host_overhead_smoke_ends_with_json_of_paired_rounds(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, str(REPO / "benchmarks" / "host_overhead.py"), "--smoke",
             "--rounds", "2", "--log_every", "2", "--data_dir", str(tmp_path / "tfds")]
  out = subprocess.run(command, env=env, cwd=tmp_path, check=True, capture_output=True, text=True,
                       timeout=600).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert result["rounds"] == 2 and result["log_every"] == 2
  assert len(result["loop_ms_per_step"]) == len(result["tight_loop_ms_per_step"]) == 2
  assert all(ms > 0 for ms in result["loop_ms_per_step"] + result["tight_loop_ms_per_step"])
  assert math.isfinite(result["host_overhead"]) and result["host_ms_per_step"] > 0


def test_memory_table_resume_keeps_finished_rows_without_compiling(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("memory_benchmark",
                                                REPO / "benchmarks" / "memory.py")
  memory = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(memory)
  row = lambda size, batch, remat: {
      "enhancer": "edsr_32x4", "image_size": size, "dtype": "float32", "remat": remat,
      "batch_per_device": batch, "temp_bytes": 2**30, "total_bytes": 2**30, "fits_gib": [16]}
  out = tmp_path / "table.json"
  # Stored out of order, with one row outside the grid asked for (another batch).
  out.write_text(json.dumps({"rows": [row(64, 4, False), row(64, 8, True), row(64, 8, False)]}))
  memory.main(["--table", "--sizes", "64", "--dtypes", "float32", "--remat", "off,on",
               "--enhancers", "edsr_32x4", "--out", str(out), "--resume"])   # nothing to compile
  rows = json.loads(out.read_text())["rows"]
  assert [(r["batch_per_device"], r["remat"]) for r in rows] == [(8, False), (8, True), (4, False)]
  assert "| edsr_32x4 | 64² | 4 | float32 | off | 1.00 | 1.00 | 16 |" in capsys.readouterr().out


@pytest.mark.slow  # ~3 min on 2 shared cores: six compiles of the tiny step (K = 1, 2, 3).
def test_multitask_step_time_smoke_reports_gradprom_over_bound_per_task_count(tmp_path):
  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0", "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, str(REPO / "benchmarks" / "multitask_step_time.py"), "--smoke",
             "--steps", "2", "--warmup", "1", "--data_dir", str(tmp_path / "tfds")]
  out = subprocess.run(command, env=env, cwd=tmp_path, check=True, capture_output=True, text=True,
                       timeout=900).stdout
  result = json.loads(out.strip().splitlines()[-1])
  assert sorted(result["tasks"]) == ["1", "2", "3"]
  for k, row in result["tasks"].items():
    # The bound adds K enhancer pull-backs to joint training's step.
    assert row["bound_ms"] == pytest.approx(row["joint_ms"] + int(k) * result["backward_ms"],
                                            abs=1e-3)
    assert math.isfinite(row["gradprom_over_bound"]) and row["gradprom_over_bound"] > 0


@pytest.mark.slow  # ~1 min on 2 shared cores: two compiles of the tiny step.
def test_gate_precision_on_cpu_reports_errors_against_float64_and_no_flips():
  out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gate_precision.py"), "--tiny",
                        "--steps", "3", "--batch", "2"], capture_output=True, text=True,
                       check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["steps"] == 3 and result["platform"] == "cpu"
  # On CPU both ways are float32 rounding away from float64, and no gate decision differs.
  assert result["highest_max_abs_error"] < 1e-5 and result["default_max_abs_error"] < 1e-5
  assert result["highest_gate_flips"] == 0
