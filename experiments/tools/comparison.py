r"""Method comparison: plan method × seed runs, run the missing ones, aggregate them into tables.

A comparison directory holds one run per row (a method, or a named *variant* of one) and seed::

  DIR/<row>/seed_<s>/        a normal workdir of a training run (+ run.log, run.json)
  DIR/summary.md, summary.csv   mean ± std over seeds of every test metric, per row and reference
  DIR/runs.csv                  every run's test metrics, one line per run
  DIR/plots/*.png               see `experiments.tools.comparison_plots`

Each run is a fresh subprocess of the training entry point, ``python -m gradprom_jax.training.main``
(found wherever the package is installed; ``experiments/main.py`` runs the same), rather than a
call in this process: a crash, a non-finite divergence or an out-of-memory kill ends that run only,
the sweep goes on, and every run starts from a clean JAX (no device buffers or flags left behind by
the previous one).
Python + JAX start-up costs a few seconds per run. The compile need not be paid again: given a
``cache_dir``, every run shares JAX's persistent compilation cache there, so the seeds of a row
after the first (same shapes, same program) load their executables instead of compiling them.
The cache changes no result, only time.

A run is *finished* when its ``results.json`` exists for the planned number of steps; finished runs
are skipped, unfinished ones are started again and resume from their newest checkpoint. A finished
run whose stored ``config.json`` differs from the planned one (other than in the keys a resume may
change) is an error rather than silently mixed into the table.

Variants are written ``NAME:KEY=VALUE[,KEY=VALUE...]`` with dotted config keys, e.g.
``soft:gradprom.mode=soft`` or ``tau0.1:gradprom.threshold=0.1``; a variant is of ``gradprom``
unless it sets ``method=...`` itself (``joint_l0.1:method=joint,task_weight=0.1``).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from experiments.tools import worker_pool
from gradprom_jax.core.system import metric_key
from gradprom_jax.core.task_config import parse_recognition
from gradprom_jax.tasks import task_kind
from gradprom_jax.methods import method_names
from gradprom_jax.training.metric_logging import METRICS_FILENAME, read_metrics
from gradprom_jax.training.run_config import CONFIG_FILENAME, RESUMABLE_KEYS, config_differences

RESULTS_FILENAME = "results.json"   # written by gradprom_jax.training.train at the end of a run
SAMPLES_FILENAME = "samples.png"
RUN_LOG_FILENAME = "run.log"        # the subprocess's stdout + stderr, appended per attempt
RUN_INFO_FILENAME = "run.json"      # command, attempts and wall seconds summed over attempts
# Reference rows of the table: each run's own recogniser on the interpolated input and on the
# high-quality image.
REFERENCES = ("no_enhancement", "hq_input")
# A judge (judge.workdir) scores the same images: judge_<metric> is a column of every row, and
# reads, for each reference row, the judge's score of that reference's image.
JUDGE_PREFIX = "judge_"
JUDGE_REFERENCE_PREFIXES = {"no_enhancement": "judge_no_enhancement_",
                            "hq_input": "judge_high_quality_"}
# results.json keys written before the rename: high_quality_* is now hq_input_*.
# Results keys that describe a run rather than score it.
RUN_KEYS = ("method", "seed", "num_train_steps", "nonfinite_steps", "evaluated_step")
# Column order of the tables; metrics not listed follow in alphabetical order.
METRIC_ORDER = ("psnr", "ssim", "dice", "iou", "dice_per_image", "pixel_accuracy", "accuracy",
                "balanced_accuracy", "macro_f1", "auc")
MAIN_MODULE = "gradprom_jax.training.main"   # the training entry point each run is a subprocess of
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the comparison: a method, with config overrides for a variant.

  Attributes:
    name: the row's name, also its directory name.
    method: the value of ``config.method``.
    overrides: ``(dotted key, value text)`` pairs, parsed as ``--config.KEY=VALUE`` would be.
  """
  name: str
  method: str
  overrides: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class PlannedRun:
  """One (row, seed) run and its workdir."""
  row: Row
  seed: int
  workdir: Path

  @property
  def label(self) -> str:
    return f"{self.row.name} seed {self.seed}"

  def config_overrides(self) -> list[str]:
    """The ``--config.KEY=VALUE`` arguments that make this run out of the shared config."""
    pairs = [("method", self.row.method), ("seed", str(self.seed)), *self.row.overrides]
    return [f"--config.{key}={value}" for key, value in pairs]


def parse_variant(spec: str) -> Row:
  """``NAME:KEY=VALUE[,KEY=VALUE...]`` -> a :class:`Row` (method gradprom unless ``method=`` given).

  Commas inside a value (``data.patch_size=(64,64)``) are kept: a new pair starts only at a comma
  followed by ``KEY=``.

  >>> parse_variant("soft:gradprom.mode=soft")
  Row(name='soft', method='gradprom', overrides=(('gradprom.mode', 'soft'),))
  >>> parse_variant("j:method=joint,task_weight=0.1,data.patch_size=(64,64)").overrides
  (('task_weight', '0.1'), ('data.patch_size', '(64,64)'))
  """
  name, sep, body = spec.partition(":")
  name = name.strip()
  if not sep or not _NAME.match(name) or not body.strip():
    raise ValueError(f"Bad variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE...] with a NAME "
                     "of letters, digits, '_', '.', '+' or '-', e.g. 'soft:gradprom.mode=soft'.")
  method, overrides = "gradprom", []
  for pair in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", body):
    key, eq, value = pair.partition("=")
    key = key.strip()
    if not eq or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
      raise ValueError(f"Bad pair {pair!r} in variant {spec!r}: expected KEY=VALUE.")
    if key == "seed":
      raise ValueError(f"Variant {spec!r} sets the seed; seeds are chosen with --seeds.")
    if key == "method":
      method = value.strip()
    else:
      overrides.append((key, value.strip()))
  if method not in method_names():
    raise ValueError(f"Variant {spec!r} names method {method!r}; expected one of "
                     f"{method_names()}.")
  return Row(name=name, method=method, overrides=tuple(overrides))


def make_rows(methods: Sequence[str], variants: Sequence[str] = ()) -> list[Row]:
  """The table's rows: each method, then each variant; names must be unique.

  >>> [r.name for r in make_rows(["gradprom", "joint"], ["soft:gradprom.mode=soft"])]
  ['gradprom', 'joint', 'soft']
  """
  unknown = [m for m in methods if m not in method_names()]
  if unknown:
    raise ValueError(f"Unknown method(s) {unknown}; expected some of {', '.join(method_names())}.")
  rows = [Row(name=m, method=m) for m in methods] + [parse_variant(v) for v in variants]
  names = [r.name for r in rows]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ValueError(f"Row name(s) {repeated} used twice; give each variant its own name.")
  if not rows:
    raise ValueError("Nothing to compare: give at least one method or variant.")
  return rows


def plan_runs(rows: Sequence[Row], seeds: Sequence[int], directory: str | os.PathLike[str]
              ) -> list[PlannedRun]:
  """Every row × seed, seeds innermost, each in ``directory/<row>/seed_<seed>``.

  >>> [str(r.workdir) for r in plan_runs(make_rows(["joint"]), [0, 1], "out")]
  ['out/joint/seed_0', 'out/joint/seed_1']
  """
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"Seeds must be distinct and at least one, got {list(seeds)}.")
  return [PlannedRun(row, int(seed), Path(directory) / row.name / f"seed_{int(seed)}")
          for row in rows for seed in seeds]


# --------------------------------------------------------------------------- configs


def format_override(key: str, value: Any) -> str:
  """``--config.KEY=VALUE`` text that `ml_collections.config_flags` parses back to `value`.

  >>> format_override("data.image_size", (32, 32)), format_override("overwrite", True)
  ('--config.data.image_size=(32, 32)', '--config.overwrite=true')
  """
  if isinstance(value, bool):
    text = "true" if value else "false"
  elif isinstance(value, str):
    text = value
  elif isinstance(value, (int, float, tuple, list)):
    text = repr(value)
  else:
    raise ValueError(f"Cannot forward override --config.{key}={value!r} of type "
                     f"{type(value).__name__} to the runs.")
  return f"--config.{key}={text}"


def load_config(config_args: Sequence[str]) -> ml_collections.ConfigDict:
  """The config the training entry point builds from ``--config=FILE[:ARGS]`` and overrides.

  Parsed by `ml_collections.config_flags` on private flag values, exactly as main parses them.

  >>> config_file = Path(__file__).resolve().parents[2] / "configs" / "default.py"   # the repo's
  >>> config = load_config([f"--config={config_file}:smoke", "--config.method=joint"])
  >>> config.method, config.num_train_steps
  ('joint', 6)
  """
  argv = ["main", *config_args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config file", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  if flag_values.config is None:
    raise ValueError(f"No --config among {list(config_args)}.")
  return flag_values.config


def forwarded_config_args(config_flag: Any) -> list[str]:
  """``--config=FILE[:ARGS]`` and the user's ``--config.KEY=VALUE`` overrides of a parsed flag.

  Method and seed are chosen per run, so overriding them here is an error.
  """
  overrides = config_flags.get_override_values(config_flag)
  for key in ("method", "seed"):
    if key in overrides:
      raise ValueError(f"--config.{key} is set per run; use --methods/--seeds/--variant instead.")
  return [f"--config={config_flags.get_config_filename(config_flag)}",
          *(format_override(k, v) for k, v in overrides.items())]


def run_config(config_args: Sequence[str], run: PlannedRun) -> ml_collections.ConfigDict:
  """The config ``run`` trains with (unknown variant keys fail here, before anything runs)."""
  try:
    return load_config([*config_args, *run.config_overrides()])
  except Exception as e:  # absl's flag errors do not name the run.
    raise ValueError(f"Bad config for {run.label} ({' '.join(run.config_overrides())}): "
                     f"{type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- running


def run_status(run: PlannedRun, config: ml_collections.ConfigDict) -> str:
  """``"finished"``, ``"partial"`` (started, will resume) or ``"new"``.

  Raises:
    ValueError: the workdir holds a run of another config (beyond resumable keys).
  """
  config_path = run.workdir / CONFIG_FILENAME
  if not config_path.exists():
    return "new"
  differences = config_differences(json.loads(config_path.read_text()), config,
                                   ignore=RESUMABLE_KEYS)
  if differences:
    raise ValueError(
        f"{run.workdir} holds a run of another config (stored -> planned):\n  "
        + "\n  ".join(differences) + "\nUse another comparison directory.")
  results_path = run.workdir / RESULTS_FILENAME
  if results_path.exists():
    results = json.loads(results_path.read_text())
    done_steps = results.get("num_train_steps")
    if done_steps == config.num_train_steps:
      return "finished"
    if done_steps is not None and done_steps > config.num_train_steps:
      # Resuming would re-score the longer run under the shorter run's name.
      raise ValueError(f"{run.workdir} finished {done_steps} steps, more than the planned "
                       f"{config.num_train_steps}. Use another comparison directory.")
  return "partial"


def execute_run(run: PlannedRun, config_args: Sequence[str], *,
                main_script: str | os.PathLike[str] | None = None,
                python: str = sys.executable,
                cache_dir: str | os.PathLike[str] | None = None,
                worker: worker_pool.WorkerSlot | None = None) -> tuple[int, float]:
  """Runs the training entry point for ``run`` in a subprocess; output goes to ``run.log``.

  ``main_script``: a script to run instead of the module :data:`MAIN_MODULE` (tests use a fake one).

  ``cache_dir``, if given, is JAX's persistent compilation cache for the subprocess (shared by
  all runs; compiles of a second or more are cached).

  ``worker``: the slot the run is on (its environment and its cores; see
  `experiments.tools.worker_pool`); ``None`` inherits this process's.

  Returns:
    (return code, wall seconds). ``run.json`` keeps the command and the seconds summed over
    attempts (a resumed run's time is the sum of its attempts).
  """
  entry_point = ["-m", MAIN_MODULE] if main_script is None else [str(main_script)]
  command = [python, *entry_point, *config_args, *run.config_overrides(),
             f"--workdir={run.workdir}"]
  run.workdir.mkdir(parents=True, exist_ok=True)
  info_path = run.workdir / RUN_INFO_FILENAME
  info = json.loads(info_path.read_text()) if info_path.exists() else {"attempts": [],
                                                                          "wall_seconds": 0.0}
  started = time.time()
  with open(run.workdir / RUN_LOG_FILENAME, "a", encoding="utf-8") as log:
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
    log.flush()
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=_run_environment(cache_dir, worker))
    if worker is not None:
      worker_pool.pin(process.pid, worker)
    try:
      returncode = process.wait()
    except KeyboardInterrupt:
      # Ctrl-C reached the run too: let it save its checkpoint and exit (subprocess.run would
      # kill it), so the next invocation resumes it.
      process.wait()
      raise
  seconds = time.time() - started
  info["command"] = shlex.join(command)
  info["attempts"].append({"returncode": returncode, "wall_seconds": round(seconds, 2)})
  info["wall_seconds"] = round(info["wall_seconds"] + seconds, 2)
  (run.workdir / RUN_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n")
  return returncode, seconds


def _run_environment(cache_dir: str | os.PathLike[str] | None,
                     worker: worker_pool.WorkerSlot | None = None) -> dict[str, str] | None:
  """This process's environment, plus JAX's compilation-cache settings when ``cache_dir`` and the
  worker's variables when ``worker``."""
  if not cache_dir and (worker is None or not worker.environment):
    return None   # inherit unchanged
  environment = dict(os.environ) if worker is None else worker.job_environment(os.environ)
  if cache_dir:
    # JAX's default threshold (cache compiles over 1 s) keeps the train and eval steps and skips
    # the small programs, which are cheaper to recompile than to look up.
    environment["JAX_COMPILATION_CACHE_DIR"] = str(Path(cache_dir).resolve())
  return environment


def log_tail(run: PlannedRun, lines: int = 15) -> str:
  """The last lines of a run's ``run.log`` (for failure messages)."""
  path = run.workdir / RUN_LOG_FILENAME
  if not path.exists():
    return ""
  # tqdm redraws with carriage returns; keep the last state of each line.
  text = [line.rsplit("\r", 1)[-1] for line in path.read_text(errors="replace").splitlines()]
  return "\n".join(text[-lines:])


def run_all(runs: Sequence[PlannedRun], config_args: Sequence[str], *,
            main_script: str | os.PathLike[str] | None = None, print_fn=print,
            cache_dir: str | os.PathLike[str] | None = None, workers: int = 1) -> list[str]:
  """Runs every unfinished run, ``workers`` at once, printing one line per finished run with an
  ETA; returns the failed runs' labels (and prints their log tails at the end).

  All configs are built and checked against existing workdirs before the first run starts.
  ``cache_dir``: see :func:`execute_run`. ``workers``: see
  `experiments.tools.worker_pool` (one: each run with default threads, as before).
  A run killed mid-way is unfinished: the next call resumes it from its newest checkpoint.
  """
  statuses = [run_status(run, run_config(config_args, run)) for run in runs]
  todo = [run for run, status in zip(runs, statuses) if status != "finished"]
  print_fn(f"{len(runs)} runs planned: {len(runs) - len(todo)} finished (skipped), "
           f"{sum(s == 'partial' for s in statuses)} to resume, "
           f"{sum(s == 'new' for s in statuses)} new; {workers} worker(s).", flush=True)

  def runner(run: PlannedRun, slot: worker_pool.WorkerSlot) -> worker_pool.Outcome:
    returncode, seconds = execute_run(run, config_args, main_script=main_script,
                                      cache_dir=cache_dir, worker=slot)
    ok = returncode == 0 and (run.workdir / RESULTS_FILENAME).exists()
    return worker_pool.Outcome(run, ok, seconds, f"exit code {returncode}")

  failures = worker_pool.run_in_parallel(todo, runner, slots=worker_pool.worker_slots(workers),
                                         label=lambda run: run.label, print_fn=print_fn)
  if failures:
    print_fn(f"{len(failures)} run(s) failed:\n" + "\n".join(
        f"{f.job.label} FAILED ({f.message}); log {f.job.workdir / RUN_LOG_FILENAME}:\n"
        f"{log_tail(f.job)}" for f in failures), flush=True)
  return [failure.job.label for failure in failures]


# --------------------------------------------------------------------------- aggregation


@dataclasses.dataclass(frozen=True)
class Statistic:
  """Mean, sample standard deviation (ddof=1; nan for one value) and count of finite values."""
  mean: float
  std: float
  n: int

  @classmethod
  def of(cls, values: Iterable[float]) -> Statistic:
    """Over the finite values (an undefined AUC is nan and is left out, not averaged in).

    >>> Statistic.of([1.0, 3.0, float("nan")])
    Statistic(mean=2.0, std=1.4142135623730951, n=2)
    """
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
    if finite.size == 0:
      return cls(math.nan, math.nan, 0)
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else math.nan
    return cls(float(np.mean(finite)), std, int(finite.size))

  def text(self, digits: int = 4) -> str:
    """``mean ± std (n)`` for a table cell.

    >>> Statistic(0.81234, 0.01, 3).text()
    '0.8123 ± 0.0100 (3)'
    """
    if self.n == 0:
      return "—"
    spread = "" if math.isnan(self.std) else f" ± {self.std:.{digits}f}"
    return f"{self.mean:.{digits}f}{spread} ({self.n})"


def read_results(runs: Iterable[PlannedRun]) -> dict[PlannedRun, dict[str, Any]]:
  """The ``results.json`` of every run that has one."""
  return {run: json.loads((run.workdir / RESULTS_FILENAME).read_text())
          for run in runs if (run.workdir / RESULTS_FILENAME).exists()}


def reference_key(reference: str, metric: str) -> str:
  """The results.json key of ``metric`` (a table column) for a reference row.

  >>> reference_key("hq_input", "dice"), reference_key("hq_input", "judge_dice")
  ('hq_input_dice', 'judge_high_quality_dice')
  """
  if metric.startswith(JUDGE_PREFIX):
    return JUDGE_REFERENCE_PREFIXES[reference] + metric[len(JUDGE_PREFIX):]
  return f"{reference}_{metric}"


def metric_names(results: Iterable[Mapping[str, Any]]) -> list[str]:
  """The system's metric names over all results (no references, no run keys), in table order.

  The judge's scores of enhanced images (``judge_<metric>``) are metrics of the system too; they
  follow the run's own.

  >>> metric_names([{"dice": 1, "psnr": 2, "no_enhancement_dice": 3, "seed": 0, "zeta": 1,
  ...                "judge_dice": 4, "judge_high_quality_dice": 5}])
  ['psnr', 'dice', 'zeta', 'judge_dice']
  >>> metric_names([{"hq_input_dice": 0.9, "no_enhancement_psnr": 20.0}])   # recognizer_only
  ['psnr', 'dice']
  >>> metric_names([{"psnr": 2, "accuracy/classification": 0.5, "dice/segmentation": 0.8,
  ...                "auc/classification": 0.6, "no_enhancement_dice/segmentation": 0.7}])
  ['psnr', 'dice/segmentation', 'accuracy/classification', 'auc/classification']
  """
  references = (*(f"{r}_" for r in REFERENCES), *JUDGE_REFERENCE_PREFIXES.values())
  numeric = [(k, v) for result in results for k, v in result.items()
             if k not in RUN_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)]
  names = {k for k, _ in numeric if not k.startswith(references)}
  # A metric that only a reference reports still gets a column (a `recognizer_only` run scores
  # no enhanced image, only the references' images).
  names |= {k.removeprefix(prefix) for k, _ in numeric for prefix in references
            if k.startswith(prefix) and prefix in {f"{r}_" for r in REFERENCES}}
  judged = {k for k in names if k.startswith(JUDGE_PREFIX)}
  names -= judged

  def table_order(name: str, prefix: str = "") -> tuple:
    # A multi-task key (dice/segmentation) sits where its metric does, its tasks in name order.
    metric, _, task = name[len(prefix):].partition("/")
    known = metric in METRIC_ORDER
    return (not known, METRIC_ORDER.index(metric) if known else 0, "" if known else metric, task)

  return (sorted(names, key=table_order)
          + sorted(judged, key=lambda name: table_order(name, JUDGE_PREFIX)))


def summarize(results: Mapping[PlannedRun, Mapping[str, Any]], rows: Sequence[Row]
              ) -> tuple[list[str], dict[str, dict[str, Statistic]]]:
  """Per row (over seeds) and per reference (over every run): metric -> :class:`Statistic`.

  Returns:
    (metric names, {table row name: {metric: Statistic}}), table rows in `rows` order followed
    by the references ``no_enhancement`` and ``hq_input``.
  """
  metrics = metric_names(results.values())
  table: dict[str, dict[str, Statistic]] = {}
  for row in rows:
    row_results = [r for run, r in results.items() if run.row == row]
    table[row.name] = {m: Statistic.of(r.get(m, math.nan) for r in row_results) for m in metrics}
  for reference in REFERENCES:
    table[reference] = {m: Statistic.of(r.get(reference_key(reference, m), math.nan)
                                        for r in results.values()) for m in metrics}
  return metrics, table


def write_summary_csv(path: str | os.PathLike[str], metrics: Sequence[str],
                      table: Mapping[str, Mapping[str, Statistic]]) -> None:
  """One line per table row: ``row``, then ``<metric>_mean``, ``<metric>_std``, ``<metric>_n``."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["row", *(f"{m}_{s}" for m in metrics for s in ("mean", "std", "n"))])
    for name, stats in table.items():
      writer.writerow([name, *(v for m in metrics
                               for v in (repr(stats[m].mean), repr(stats[m].std), stats[m].n))])


def write_runs_csv(path: str | os.PathLike[str],
                   results: Mapping[PlannedRun, Mapping[str, Any]]) -> None:
  """Every run's results, one line each (``row``, ``seed``, then the results.json keys)."""
  keys = sorted({k for r in results.values() for k in r if k not in ("seed",)})
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["row", "seed", *keys])
    for run, result in results.items():
      writer.writerow([run.row.name, run.seed, *(result.get(k, "") for k in keys)])


def markdown_table(metrics: Sequence[str], table: Mapping[str, Mapping[str, Statistic]]) -> str:
  """The table as GitHub markdown, one ``mean ± std (n)`` cell per row and metric.

  >>> print(markdown_table(["psnr"], {"joint": {"psnr": Statistic(30.0, 0.5, 2)}}))
  | row | psnr |
  |---|---|
  | joint | 30.0000 ± 0.5000 (2) |
  """
  lines = ["| row | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
  for name, stats in table.items():
    lines.append(f"| {name} | " + " | ".join(stats[m].text() for m in metrics) + " |")
  return "\n".join(lines)


def write_summary_markdown(path: str | os.PathLike[str], metrics: Sequence[str],
                           table: Mapping[str, Mapping[str, Statistic]], *, rows: Sequence[Row],
                           command: str, wall_seconds: float, run_seconds: float,
                           num_runs: int, failed: Sequence[str] = (),
                           plots: Sequence[str] = (),
                           geometry: Mapping[str, Mapping[str, Statistic]] | None = None) -> None:
  """``summary.md``: the table, what each row is, the exact command and the times."""
  described = [f"- `{r.name}`: method `{r.method}`"
               + "".join(f", `{k}={v}`" for k, v in r.overrides) for r in rows]
  text = [
      "# Comparison", "",
      "Test-set metrics, mean ± sample std (ddof=1) over seeds, (n) = runs with a finite value. "
      "References over every run: `no_enhancement` is each run's recogniser on the interpolated "
      "degraded input, `hq_input` on the high-quality image (no PSNR/SSIM: it is the target; not "
      "an upper bound when the recogniser was trained on enhanced images). `judge_*` columns, "
      "where present: one fixed recogniser trained on high-quality images only (judge.workdir) "
      "on each row's enhanced images, and on the references' images in their rows.",
      "", markdown_table(metrics, table), "", "Rows:", *described, "",
      *(["Gradient geometry during training, mean ± std over seeds of each run's last cumulative "
         "gate-open rate (for pcgrad: the fraction of steps whose g_t needed no projection) and "
         "of its medians over the logged steps (cosine of g_e and g_t; ‖g_t‖/‖g_e‖):", "",
         markdown_table(geometry_columns(geometry), _filled(geometry)), ""]
        if geometry else []),
      f"Command: `{command}`", "",
      f"Run time, summed over the {num_runs} runs' attempts (all invocations): "
      f"{worker_pool.duration(run_seconds)}. Wall time of the invocation that wrote this summary: "
      f"{worker_pool.duration(wall_seconds)} (finished runs are skipped, not rerun).",
  ]
  if failed:
    text += ["", f"**Failed runs ({len(failed)}), left out of the table:** " + ", ".join(failed)]
  if plots:
    text += ["", "Plots: " + ", ".join(f"[{Path(p).name}](plots/{Path(p).name})" for p in plots)]
  Path(path).write_text("\n".join(text) + "\n", encoding="utf-8")


def _filled(table: Mapping[str, Mapping[str, Statistic]]) -> dict[str, dict[str, Statistic]]:
  """Every row with every column of the table (a row without one: an empty statistic)."""
  columns = geometry_columns(table)
  return {name: {c: stats.get(c, Statistic.of(())) for c in columns} for name, stats in table.items()}


def total_run_seconds(runs: Iterable[PlannedRun]) -> float:
  """Wall seconds summed over every run's attempts (from ``run.json``)."""
  total = 0.0
  for run in runs:
    path = run.workdir / RUN_INFO_FILENAME
    if path.exists():
      total += float(json.loads(path.read_text()).get("wall_seconds", 0.0))
  return total


def read_run_metrics(runs: Iterable[PlannedRun]) -> dict[PlannedRun, list[dict[str, Any]]]:
  """The ``metrics.jsonl`` records of every run that has them."""
  return {run: read_metrics(run.workdir / METRICS_FILENAME) for run in runs
          if (run.workdir / METRICS_FILENAME).exists()}


GEOMETRY_COLUMNS = ("gate_open_rate", "median_cosine", "median_task_over_enhancement_norm")


def geometry_columns(geometry: Mapping[str, Mapping[str, Statistic]]) -> list[str]:
  """The columns of a :func:`gradient_geometry` table: :data:`GEOMETRY_COLUMNS`, or for a
  multi-task comparison each of them per task (``gate_open_rate/segmentation``, ...)."""
  present = {c for stats in geometry.values() for c in stats}
  columns = [c for c in GEOMETRY_COLUMNS if c in present]
  by_task = sorted({c.partition("/")[2] for c in present if "/" in c})
  return columns + [metric_key(c, task, True) for task in by_task for c in GEOMETRY_COLUMNS
                    if metric_key(c, task, True) in present]


def gradient_geometry(records: Mapping[PlannedRun, Sequence[Mapping[str, Any]]],
                      rows: Sequence[Row]) -> dict[str, dict[str, Statistic]]:
  """Per row, over seeds: how g_e and g_t met during training (from the logged train records).

  Per run: ``gate_open_rate`` is the last logged (cumulative) fraction of steps whose gate was
  open; ``median_cosine`` and ``median_task_over_enhancement_norm`` (‖g_t‖/‖g_e‖) are medians
  over the logged steps. Rows that log none of these (enhance_only, two_stage without the
  baseline cosine) are left out.

  >>> run = PlannedRun(Row("gradprom", "gradprom"), 0, Path("x"))
  >>> log = [{"kind": "train", "cosine": c, "gate_open_rate": r, "task_grad_norm": 2.0,
  ...         "enhancement_grad_norm": 1.0} for c, r in ((0.2, 1.0), (-0.1, 0.5), (0.4, 0.6))]
  >>> geometry = gradient_geometry({run: log}, [run.row])["gradprom"]
  >>> geometry["gate_open_rate"].mean, geometry["median_cosine"].mean
  (0.6, 0.2)

  A multi-task run's values are per task, each column suffixed with the task's name.

  >>> log = [{"kind": "train", "cosine/masks": 0.3, "gate_open_rate/masks": 1.0,
  ...         "task_grad_norm/masks": 3.0, "enhancement_grad_norm": 1.0}]
  >>> sorted(gradient_geometry({run: log}, [run.row])["gradprom"])
  ['gate_open_rate/masks', 'median_cosine/masks', 'median_task_over_enhancement_norm/masks']
  """
  def per_run(log: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    train = [r for r in log if r.get("kind") == "train"]
    keys = {k for r in train for k in r}
    suffixes = [""] + sorted({k.partition("/")[2] for k in keys
                              if k.partition("/")[0] in ("cosine", "gate_open_rate",
                                                         "task_grad_norm") and "/" in k})
    values = {}
    for task in suffixes:
      end = f"/{task}" if task else ""
      rates = [r[f"gate_open_rate{end}"] for r in train if f"gate_open_rate{end}" in r]
      if rates:
        values[f"gate_open_rate{end}"] = float(rates[-1])
      cosines = [r[f"cosine{end}"] for r in train if f"cosine{end}" in r]
      if cosines:
        values[f"median_cosine{end}"] = float(np.median(cosines))
      ratios = [r[f"task_grad_norm{end}"] / r["enhancement_grad_norm"] for r in train
                if r.get("enhancement_grad_norm") and f"task_grad_norm{end}" in r]
      if ratios:
        values[f"median_task_over_enhancement_norm{end}"] = float(np.median(ratios))
    return values

  table = {}
  for row in rows:
    runs = [per_run(log) for run, log in records.items() if run.row == row]
    columns = sorted({c for r in runs for c in r})
    if any(runs):
      single = all("/" not in c for c in columns)
      table[row.name] = {c: Statistic.of(r.get(c, math.nan) for r in runs)
                         for c in (GEOMETRY_COLUMNS if single else columns)}
  return table


def default_task_metric(recognition: str | Sequence[str]) -> str:
  """The task metric plotted against PSNR, the first task's kind's ``primary_metric`` (Dice for
  segmentation, accuracy for classification), suffixed with the task's name when there are several.

  >>> default_task_metric("segmentation"), default_task_metric("segmentation,classification")
  ('dice', 'dice/segmentation')
  """
  tasks = parse_recognition(recognition)
  return metric_key(task_kind(tasks[0]).primary_metric, tasks[0], len(tasks) > 1)


def report(directory: str | os.PathLike[str], runs: Sequence[PlannedRun], rows: Sequence[Row], *,
           command: str, wall_seconds: float, task_metric: str,
           thresholds: Mapping[str, float] | None = None, failed: Sequence[str] = ()
           ) -> dict[str, dict[str, Statistic]]:
  """Writes ``summary.md``, ``summary.csv``, ``runs.csv`` and ``plots/`` for the runs that finished.

  Args:
    thresholds: per gradprom row, its gate threshold (drawn on the cosine histogram).

  Returns:
    The table (row name -> metric -> Statistic).
  """
  from experiments.tools import comparison_plots  # matplotlib only when reporting

  directory = Path(directory)
  results = read_results(runs)
  if not results:
    raise ValueError(f"No finished run (no {RESULTS_FILENAME}) under {directory}.")
  metrics, table = summarize(results, rows)
  write_summary_csv(directory / "summary.csv", metrics, table)
  write_runs_csv(directory / "runs.csv", results)
  records = read_run_metrics(runs)
  plots = comparison_plots.write_comparison_plots(
      directory / "plots", rows=rows, results=results, records=records,
      task_metric=task_metric, thresholds=thresholds or {},
      samples={row.name: [r.workdir / SAMPLES_FILENAME for r in runs if r.row == row]
               for row in rows})
  write_summary_markdown(directory / "summary.md", metrics, table, rows=rows, command=command,
                         wall_seconds=wall_seconds, run_seconds=total_run_seconds(runs),
                         num_runs=len(runs), failed=failed, plots=plots,
                         geometry=gradient_geometry(records, rows))
  return table
