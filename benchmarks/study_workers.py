r"""Throughput of the study's runs: one worker with XLA's default threads against several
single-threaded workers, each pinned to its share of the cores (`experiments.tools.worker_pool`).

    .venv/bin/python benchmarks/study_workers.py                        # 2 GradProm runs each way
    .venv/bin/python benchmarks/study_workers.py --steps 20 --workers 2 --runs 2   # seconds-long

Runs ``--runs`` GradProm runs of the study's grid (seeds 0, 1, ...; configs/default.py shrunk as
results/pretrained_recognizer/reproduce.sh shrinks the segmentation settings) through
``comparison.run_all`` twice: with one worker, then with ``--workers``. Each run's speed is the
median of its logged ``steps_per_second`` (compiles excluded); the throughput of one worker is the
mean over its runs (they ran one after another), of N workers the mean speed times N (they ran side
by side; with ``--runs`` a multiple of N they overlap throughout). Also prints each mode's wall
time (compiles and data build included: the logged speed excludes them) and the load average
before and after. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))   # the repository: experiments.tools
from experiments.tools import comparison, evidence  # noqa: E402

SHRUNK = ["--config.data.image_size=(96, 128)", "--config.data.patch_size=(48, 64)",
          "--config.model.enhancer.features=16", "--config.model.enhancer.num_blocks=2",
          "--config.model.recognizer.features=8", "--config.eval_every=100000",
          "--config.checkpoint_every=100000"]


def run_speed(workdir: Path) -> float:
  """Median logged steps/s of a finished run."""
  speeds = [r["steps_per_second"] for r in evidence.read_run_records(workdir)
            if r.get("kind") == "train" and "steps_per_second" in r]
  return statistics.median(speeds) if speeds else float("nan")


def measure(workers: int, args: argparse.Namespace, directory: Path) -> dict:
  config_args = [f"--config={REPO / 'configs' / 'default.py'}", *SHRUNK,
                 f"--config.num_train_steps={args.steps}",
                 f"--config.log_every={max(1, args.steps // 6)}",
                 f"--config.data.data_dir={args.data_dir or directory / 'tfds'}"]
  runs = comparison.plan_runs(comparison.make_rows(["gradprom"]), list(range(args.runs)),
                              directory / f"workers_{workers}")
  started = time.time()
  failed = comparison.run_all(runs, config_args, workers=workers, cache_dir=directory / "cache")
  if failed:
    sys.exit(f"Failed: {failed}; see their run.log under {directory}.")
  speeds = [run_speed(run.workdir) for run in runs]
  return {"workers": workers, "run_steps_per_second": [round(s, 2) for s in speeds],
          "throughput_steps_per_second": round(statistics.mean(speeds) * workers, 2),
          "wall_seconds": round(time.time() - started, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=120)
  parser.add_argument("--runs", type=int, default=2)
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--data_dir", default=None, help="TFDS directory (default: a temporary one)")
  args = parser.parse_args()
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    one = measure(1, args, Path(tmp))
    several = measure(args.workers, args, Path(tmp))
  summary = {"one_worker_default_threads": one, "single_threaded_workers": several,
             "speedup": round(several["throughput_steps_per_second"]
                              / one["throughput_steps_per_second"], 3),
             "steps": args.steps, "cpus": len(os.sched_getaffinity(0)),
             "load_average_before": [round(x, 2) for x in load_before],
             "load_average_after": [round(x, 2) for x in os.getloadavg()]}
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
