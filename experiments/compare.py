r"""Compares methods (and GradProm variants) over seeds; intentionally short.

Runs every method × seed through the training entry point (`python -m gradprom_jax.training.main`,
each in its own subprocess, one after the other), skips runs that already finished, then writes
DIR/summary.md, DIR/summary.csv, DIR/runs.csv and DIR/plots/*.png. Running the same command again
resumes an interrupted sweep. All logic lives in `experiments.tools.comparison` and
`experiments.tools.comparison_plots`.

  python experiments/compare.py --config configs/default.py --workdir workdirs/cmp_default \
      --methods gradprom,joint,pcgrad,enhance_only,two_stage --seeds 0,1,2 \
      --variant soft:gradprom.mode=soft --variant per_leaf:gradprom.granularity=per_leaf \
      --variant tau0.1:gradprom.threshold=0.1 --config.num_train_steps=300

`--config.KEY=VALUE` overrides apply to every run. A variant is `NAME:KEY=VALUE[,KEY=VALUE...]`
(repeat `--variant`); it is of gradprom unless it sets `method=...`. `--norun` only re-aggregates.
"""
import os
import shlex
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository: experiments.tools
from experiments.tools import comparison  # noqa: E402
from gradprom_jax.configuration.config import METHODS  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file shared by every run (overrides with --config.KEY=VALUE).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Comparison directory: DIR/<row>/seed_<s>/, "
                               "summary.md, summary.csv, runs.csv, plots/.")
_METHODS = flags.DEFINE_list("methods", list(METHODS), "Methods to compare.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every method.")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "Extra row NAME:KEY=VALUE[,KEY=VALUE...], e.g. soft:gradprom.mode=soft.")
_TASK_METRIC = flags.DEFINE_string(
    "task_metric", None, "Task metric of the plots (default: dice or accuracy).")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "JAX persistent compilation cache shared by the runs, so later "
    "seeds of a row skip the compile (default DIR/jax_cache; '' turns it off). Changes no result.")
_WORKERS = flags.DEFINE_integer(
    "workers", 1, "Runs at once; more than one: each single-threaded, pinned to its share of the "
    "cores (experiments.tools.worker_pool).")
_RUN = flags.DEFINE_bool("run", True, "Run unfinished runs; --norun only aggregates finished ones.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  started = time.time()
  try:
    rows = comparison.make_rows(_METHODS.value, _VARIANTS.value)
    runs = comparison.plan_runs(rows, [int(s) for s in _SEEDS.value], _WORKDIR.value)
    config_args = comparison.forwarded_config_args(flags.FLAGS["config"])
    cache_dir = (os.path.join(_WORKDIR.value, "jax_cache") if _CACHE_DIR.value is None
                 else _CACHE_DIR.value)
    failed = (comparison.run_all(runs, config_args, cache_dir=cache_dir, workers=_WORKERS.value)
              if _RUN.value else [])
    # Each gradprom row's gate threshold, drawn on its cosine histogram.
    thresholds = {run.row.name: comparison.run_config(config_args, run).gradprom.threshold
                  for run in runs if run.row.method == "gradprom" and run.seed == runs[0].seed}
    comparison.report(
        _WORKDIR.value, runs, rows, command=shlex.join([sys.executable, *sys.argv]),
        wall_seconds=time.time() - started, failed=failed, thresholds=thresholds,
        task_metric=_TASK_METRIC.value or comparison.default_task_metric(
            _CONFIG.value.task.recognition))
  except ValueError as e:   # a bad flag, variant or workdir: the message says which
    sys.exit(f"compare.py: {e}")
  print(f"Wrote {_WORKDIR.value}/summary.md, summary.csv, runs.csv and plots/.")
  if failed:
    sys.exit(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
