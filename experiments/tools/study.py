r"""The study protocol: does GradProm's gate buy a better quality–task trade-off than adding less task
gradient? Five stages, each resumable (finished runs are skipped), under one study directory::

  DIR/recognizers/recognizer_only/seed_<s>/   1. pre-trained recognisers (seeds) and the judge
  DIR/<regime>/<row>/seed_<s>/                2. the grid: <method>_l<λ> × seeds, enhance_only
                                                 (and two_stage when fine-tuned) × seeds
                                              3. random_gate_l<λ>: the random gate at GradProm's own
                                                 gate-open rate at that λ and seed
                                              4. gp_batch<B>: gate-reliability probes (seed 0)
                                              5. the reports (`experiments/evidence_report.py`)

Stages 2 and 3 run seed by seed (every row of seed ``s``, then its random gates, then seed
``s + 1``), so a study stopped early holds whole fronts for its first seeds. With
``extend_grid``, the λ grid is extended after the first seed, on its validation results alone
(:func:`decide_grid_extension`), and the decision is kept in ``<regime>/grid_extension.json`` so a
resumed study keeps it.

Every grid run starts from the recogniser of its own seed (``recognizer.init_from``), frozen or
fine-tuned (the regime), and is scored by the judge as well. The schedules are
:func:`schedule_overrides` of a step count; a user's ``--config.KEY=VALUE`` wins over them.

>>> options = StudyOptions(seeds=(0, 1), lambdas=(0.1, 1.0), methods=("joint", "gradprom"))
>>> [(stage, rows[:3]) for stage, rows in planned_stages(options)]  # doctest: +NORMALIZE_WHITESPACE
[('recognizers', ['recognizer_only']), ('grid', ['enhance_only', 'joint_l0.1', 'joint_l1']),
 ('random_gate', ['random_gate_l0.1', 'random_gate_l1']), ('gate_probes', ['gp_batch8', 'gp_batch32']),
 ('report', [])]
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from experiments.tools import comparison, evidence
from experiments.tools.comparison import PlannedRun, Row, parse_variant, plan_runs
from gradprom_jax.core.system import metric_key
from gradprom_jax.core.task_config import parse_recognition
from gradprom_jax.tasks import task_kind

REGIMES = ("frozen", "finetuned")
STAGES = ("recognizers", "grid", "random_gate", "gate_probes", "report")
# Rows of the λ grid that are not config methods: gradprom with ‖g_t‖ rescaled to ‖g_e‖.
GRID_METHODS = {"gp_norm": ("gradprom", (("gradprom.task_scale", "enhancement_norm"),))}
RANDOM_GATE = "random_gate"
PROBE_PREFIX = "gp_batch"   # the row names evidence_report's gate-reliability table reads


@dataclasses.dataclass(frozen=True)
class StudyOptions:
  """The protocol's choices (defaults: results/pretrained_recognizer/PROTOCOL.md's, 5 seeds).

  Attributes:
    regime: ``frozen`` or ``finetuned`` recognisers.
    seeds: the paired seeds; seed ``s`` starts from recogniser ``seed_<s>``.
    lambdas: the task weights λ of the grid.
    methods: grid methods (config methods, or ``gp_norm``).
    variants: further grid rows ``NAME:KEY=VALUE,...`` (as compare.py's), each swept over λ.
    judge_seed: the seed of the judge, a recogniser trained like the others.
    recognizer_steps, steps: training steps of the recognisers and of every other run.
    probe_batches: the batch sizes of the gate-reliability probes.
    probe_lambda: the probes' λ; ``None``: GradProm's λ chosen on validation (the protocol's rule).
    probe_every: steps between two probes (300 steps / 3 = 100 probes a run).
    extend_grid: extend λ after the first seed where the grid does not bracket the trade-off
      (:func:`decide_grid_extension`).
  """
  regime: str = "frozen"
  seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
  lambdas: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
  methods: tuple[str, ...] = ("joint", "gradprom", "pcgrad", "gp_norm")
  variants: tuple[str, ...] = ()
  judge_seed: int = 100
  recognizer_steps: int = 600
  steps: int = 300
  probe_batches: tuple[int, ...] = (8, 32)
  probe_lambda: float | None = None
  probe_every: int = 10
  extend_grid: bool = False

  def __post_init__(self):
    if self.regime not in REGIMES:
      raise ValueError(f"regime must be one of {REGIMES}, got {self.regime!r}.")
    if self.judge_seed in self.seeds:
      raise ValueError(f"The judge's seed {self.judge_seed} is also a study seed.")
    if not self.lambdas or any(not (w > 0 and math.isfinite(w)) for w in self.lambdas):
      raise ValueError(f"λ must be positive and finite, got {self.lambdas}.")


def lambda_row(method: str, weight: float) -> Row:
  """The grid row ``<method>_l<λ>``.

  >>> lambda_row("gp_norm", 0.1)
  Row(name='gp_norm_l0.1', method='gradprom', overrides=(('gradprom.task_scale', 'enhancement_norm'), ('task_weight', '0.1')))
  """
  base, overrides = GRID_METHODS.get(method, (method, ()))
  row = parse_variant(f"{method}_l{weight:g}:method={base},"
                      + ",".join(f"{k}={v}" for k, v in (*overrides, ("task_weight", f"{weight:g}"))))
  return row


def variant_rows(spec: str, lambdas: Sequence[float]) -> list[Row]:
  """A ``--variant NAME:KEY=VALUE,...`` swept over λ: rows ``NAME_l<λ>`` (it joins the fronts).

  >>> [r.name for r in variant_rows("gp_ema:gradprom.mode=soft", [0.1, 1])]
  ['gp_ema_l0.1', 'gp_ema_l1']
  """
  row = parse_variant(spec)
  if any(key == "task_weight" for key, _ in row.overrides):
    raise ValueError(f"Variant {spec!r} sets task_weight; the study sweeps it over --lambdas.")
  return [Row(f"{row.name}_l{w:g}", row.method, (*row.overrides, ("task_weight", f"{w:g}")))
          for w in lambdas]


def controls(options: StudyOptions) -> list[Row]:
  """enhance_only, and two_stage when the recogniser is fine-tuned."""
  names = ["enhance_only"] + (["two_stage"] if options.regime == "finetuned" else [])
  return [Row(name, name) for name in names]


def grid_rows(options: StudyOptions) -> list[Row]:
  """The controls, every method × λ, then every variant × λ."""
  rows = controls(options) + [lambda_row(m, w) for m in options.methods for w in options.lambdas]
  rows += [row for spec in options.variants for row in variant_rows(spec, options.lambdas)]
  names = [row.name for row in rows]
  if len(set(names)) != len(names):
    raise ValueError(f"Grid row names repeat: {sorted({n for n in names if names.count(n) > 1})}.")
  return rows


def random_gate_name(weight: float) -> str:
  return f"{RANDOM_GATE}_l{weight:g}"


def probe_rows(options: StudyOptions, weight: float) -> list[Row]:
  """GradProm at ``weight`` probing its gate every ``probe_every`` steps, a row per batch size."""
  return [Row(f"{PROBE_PREFIX}{batch}", "gradprom",
              (("task_weight", f"{weight:g}"), ("batch_size", str(batch)),
               ("gate_reliability_every", str(options.probe_every))))
          for batch in options.probe_batches]


def planned_stages(options: StudyOptions) -> list[tuple[str, list[str]]]:
  """Each stage and the row names it runs (the plan printed before anything runs)."""
  return [("recognizers", ["recognizer_only"]),
          ("grid", [row.name for row in grid_rows(options)]),
          ("random_gate", ([random_gate_name(w) for w in options.lambdas]
                           if "gradprom" in options.methods else [])),
          ("gate_probes", [row.name for row in probe_rows(options, 1.0)]
           if "gradprom" in options.methods else []),
          ("report", [])]


# --------------------------------------------------------------------------- directories and configs


def recognizer_dir(workdir: str | Path) -> Path:
  return Path(workdir) / "recognizers"


def grid_dir(workdir: str | Path, options: StudyOptions) -> Path:
  return Path(workdir) / options.regime


def schedule_overrides(steps: int, log_points: int) -> list[str]:
  """A run of ``steps`` steps as the protocol schedules it: 5 % warm-up, 3 evaluations, one
  checkpoint kept (at the end), about ``log_points`` train records.

  >>> schedule_overrides(300, log_points=30)  # doctest: +NORMALIZE_WHITESPACE
  ['--config.num_train_steps=300', '--config.optim.warmup_steps=15', '--config.log_every=10',
   '--config.eval_every=100', '--config.checkpoint_every=300', '--config.keep_checkpoints=1']
  """
  if steps < 1:
    raise ValueError(f"steps must be at least 1, got {steps}.")
  values = {"num_train_steps": steps, "optim.warmup_steps": max(1, steps // 20),
            "log_every": max(1, steps // log_points), "eval_every": max(1, steps // 3),
            "checkpoint_every": steps, "keep_checkpoints": 1}
  return [f"--config.{key}={value}" for key, value in values.items()]


def with_schedule(config_args: Sequence[str], schedule: Sequence[str]) -> list[str]:
  """``--config=FILE`` first, then the schedule, then the user's overrides (which win)."""
  return [config_args[0], *schedule, *config_args[1:]]


def recognizer_stage(config_args: Sequence[str], options: StudyOptions, workdir: str | Path
                     ) -> tuple[list[str], list[PlannedRun]]:
  """The recognisers' config arguments and runs: one per seed, and the judge."""
  runs = plan_runs([Row("recognizer_only", "recognizer_only")],
                   [*options.seeds, options.judge_seed], recognizer_dir(workdir))
  return with_schedule(config_args, schedule_overrides(options.recognizer_steps, 12)), runs


def regime_config_args(config_args: Sequence[str], options: StudyOptions, workdir: str | Path
                       ) -> list[str]:
  """Every non-recogniser run's arguments: the schedule, its seed's recogniser and the judge."""
  recognizers = (recognizer_dir(workdir) / "recognizer_only").resolve()
  frozen = "true" if options.regime == "frozen" else "false"
  schedule = [*schedule_overrides(options.steps, 30),
              f"--config.recognizer.init_from={recognizers / 'seed_{seed}'}",
              f"--config.recognizer.frozen={frozen}",
              f"--config.judge.workdir={recognizers / f'seed_{options.judge_seed}'}"]
  return with_schedule(config_args, schedule)


def grid_runs(options: StudyOptions, workdir: str | Path) -> list[PlannedRun]:
  return plan_runs(grid_rows(options), options.seeds, grid_dir(workdir, options))


# --------------------------------------------------------------------------- stages that read runs


def gate_open_rate(run_dir: str | Path) -> float | None:
  """A GradProm run's final cumulative gate-open rate (its last logged train record), to 3 decimals
  as evidence_report's ``select`` writes it; ``None`` if the run has not finished (a stopped run's
  rate is not its final one) or logged none."""
  if not (Path(run_dir) / "results.json").exists():
    return None
  rates = [r["gate_open_rate"] for r in evidence.read_run_records(run_dir)
           if r.get("kind") == "train" and "gate_open_rate" in r]
  return round(float(rates[-1]), 3) if rates else None


def random_gate_runs(options: StudyOptions, workdir: str | Path,
                     open_rate: Callable[[Path], float | None] = gate_open_rate
                     ) -> tuple[list[PlannedRun], list[str]]:
  """The random gate at every λ and seed, at the matching GradProm run's open rate.

  Returns:
    (runs, labels of the GradProm runs without an open rate, whose controls cannot be planned).
  """
  directory = grid_dir(workdir, options)
  runs, missing = [], []
  for weight in options.lambdas if "gradprom" in options.methods else ():
    for seed in options.seeds:
      source = directory / lambda_row("gradprom", weight).name / f"seed_{seed}"
      rate = open_rate(source)
      if rate is None:
        missing.append(f"gradprom_l{weight:g} seed {seed}")
        continue
      row = Row(random_gate_name(weight), RANDOM_GATE,
                (("task_weight", f"{weight:g}"), ("random_gate.open_rate", repr(rate))))
      runs.append(PlannedRun(row, seed, directory / row.name / f"seed_{seed}"))
  return runs, missing


def chosen_gradprom_lambda(options: StudyOptions, workdir: str | Path, task_metric: str
                           ) -> float | None:
  """GradProm's λ chosen on validation at the first seed (evidence.choose_lambda, the protocol's
  rule, against enhance_only's validation PSNR); ``None`` before those runs finished."""
  seed = options.seeds[0]
  runs = evidence.load_runs(grid_dir(workdir, options))
  reference = runs.get(("enhance_only", seed))
  validation = {w: runs[lambda_row("gradprom", w).name, seed].final_validation()
                for w in options.lambdas if (lambda_row("gradprom", w).name, seed) in runs}
  validation = {w: v for w, v in validation.items() if "psnr" in v and task_metric in v}
  if reference is None or "psnr" not in reference.final_validation() or not validation:
    return None
  return evidence.choose_lambda(validation, reference_psnr=reference.final_validation()["psnr"],
                                task_metric=task_metric)


def probe_runs(options: StudyOptions, workdir: str | Path, weight: float) -> list[PlannedRun]:
  return plan_runs(probe_rows(options, weight), options.seeds[:1], grid_dir(workdir, options))


def default_task_metrics(recognition: str | Sequence[str]) -> list[str]:
  """The task metrics the fronts are read on, as the first task's kind names them (its
  ``front_metrics``: AUC and balanced accuracy for classification, Dice for segmentation), suffixed
  with the task's name when there are several.

  >>> default_task_metrics("classification"), default_task_metrics("segmentation,classification")
  (['auc', 'balanced_accuracy'], ['dice/segmentation'])
  """
  tasks = parse_recognition(recognition)
  return [metric_key(m, tasks[0], len(tasks) > 1) for m in task_kind(tasks[0]).front_metrics]


# --------------------------------------------------------------------------- extending the grid


EXTENSION_FILENAME = "grid_extension.json"
# The extension's rule (results/fronts/PROTOCOL.md): PSNR lost at the smallest λ beyond this means
# the grid does not reach enhancement-only's end of the fronts.
LOW_END_PSNR_LOSS = 0.1


def decide_grid_extension(options: StudyOptions, workdir: str | Path, *, task_metric: str,
                          task_gain: float) -> dict:
  """Whether the λ grid brackets the trade-off, read on the first seed's validation results only.

  * If no grid row's task metric at the largest λ exceeds enhancement-only's by ``task_gain`` (the
    largest matched task gain), λ × 3 and λ × 10 of the largest λ are added;
  * if any grid row's PSNR at the smallest λ is more than 0.1 dB below enhancement-only's,
    λ × 0.3 and λ × 0.1 of the smallest λ are added.

  Returns:
    The decision: ``added`` (the λ to add, may be empty) and the values it was read from.

  Raises:
    StudyError: a run the decision reads has not finished (failed?).
  """
  seed = options.seeds[0]
  runs = evidence.load_runs(grid_dir(workdir, options))
  low, high = min(options.lambdas), max(options.lambdas)
  names = {w: [lambda_row(m, w).name for m in options.methods]
           + [row.name for spec in options.variants for row in variant_rows(spec, [w])]
           for w in (low, high)}
  needed = ["enhance_only", *names[low], *names[high]]
  missing = [name for name in needed if (name, seed) not in runs
             or not {"psnr", task_metric} <= set(runs[name, seed].final_validation())]
  if missing:
    raise StudyError(f"The grid extension is decided on seed {seed}'s validation results, but "
                     f"{', '.join(missing)} (seed {seed}) did not finish with psnr and {task_metric}; "
                     "see their run.log and run the same command again.")
  validation = {name: runs[name, seed].final_validation() for name in needed}
  reference = validation["enhance_only"]
  best_gain = max(validation[n][task_metric] - reference[task_metric] for n in names[high])
  worst_loss = max(reference["psnr"] - validation[n]["psnr"] for n in names[low])
  added = []
  if worst_loss > LOW_END_PSNR_LOSS:
    added += [round(low * 0.3, 12), round(low * 0.1, 12)]
  if best_gain <= task_gain:
    added += [high * 3, high * 10]
  return {"seed": seed, "task_metric": task_metric, "task_gain": task_gain,
          "best_task_gain_at_largest_lambda": best_gain,
          "largest_psnr_loss_at_smallest_lambda": worst_loss, "added": added}


def grid_extension(options: StudyOptions, workdir: str | Path, *, task_metric: str,
                   task_gain: float | None) -> dict:
  """The decision kept in ``<regime>/grid_extension.json``, made (and written) on first call."""
  path = grid_dir(workdir, options) / EXTENSION_FILENAME
  if path.exists():
    return json.loads(path.read_text())
  if task_gain is None:
    raise StudyError(f"extend_grid needs the largest matched gain of {task_metric} "
                     f"(--task_gains {task_metric}=g1,g2,...).")
  decision = decide_grid_extension(options, workdir, task_metric=task_metric, task_gain=task_gain)
  path.write_text(json.dumps(decision, indent=2) + "\n")
  return decision


def largest_task_gain(task_gains: Sequence[str], task_metric: str) -> float | None:
  """The largest gain ``--task_gains`` sets for ``task_metric`` (``METRIC=g1,g2`` or ``g1,g2``).

  >>> largest_task_gain(["auc=0.01,0.02", "balanced_accuracy=0.05,0.2"], "balanced_accuracy")
  0.2
  >>> largest_task_gain(["0.01,0.03"], "dice"), largest_task_gain([], "dice")
  (0.03, None)
  """
  found = None
  for spec in task_gains:
    metric, _, values = spec.rpartition("=")
    if metric in ("", task_metric):
      found = max(float(v) for v in values.split(","))
  return found


# --------------------------------------------------------------------------- running the study


REPORT_FILENAME = "study.md"


def run_study(config_args: Sequence[str], options: StudyOptions, workdir: str | Path, *,
              task_metrics: Sequence[str], setting: str, report_script: str | Path,
              task_gains: Sequence[str] = (), workers: int = 1, cache_dir: str | Path | None = None,
              main_script: str | Path | None = None, command: str = "", print_fn=print
              ) -> list[str]:
  """Runs the five stages in order (finished runs skipped) and writes ``<regime>/study.md``.

  Args:
    config_args: ``--config=FILE[:ARGS]`` and the user's overrides, as compare.py forwards them.
    report_script: ``experiments/evidence_report.py``, run for the reports.
    task_gains: the fronts' matched task gains, as ``evidence_report.py fronts --task_gains``
      takes them (``g1,g2`` or ``METRIC=g1,g2`` each); empty: its default.
    workers, cache_dir, main_script: see `comparison.run_all`.

  Returns:
    The labels of the runs that failed and the stages that could not run.
  """
  workdir = Path(workdir)
  failed: list[str] = []
  notes: list[str] = []

  def stage(name: str, runs: Sequence[PlannedRun], args: Sequence[str]) -> None:
    print_fn(f"== {name}: {len(runs)} runs", flush=True)
    failed.extend(comparison.run_all(runs, args, workers=workers, cache_dir=cache_dir,
                                     main_script=main_script, print_fn=print_fn))

  args, runs = recognizer_stage(config_args, options, workdir)
  stage("recognizers", runs, args)
  if failed:
    raise StudyError(f"Recogniser run(s) failed: {', '.join(failed)}; every later run starts from "
                     "them. See their run.log; run the same command again to resume.")
  args = regime_config_args(config_args, options, workdir)

  def seed_stages(seed: int, lambdas: Sequence[float]) -> None:
    one_seed = dataclasses.replace(options, seeds=(seed,), lambdas=tuple(lambdas))
    stage(f"grid, seed {seed}", grid_runs(one_seed, workdir), args)
    runs, missing = random_gate_runs(one_seed, workdir)
    if missing:
      notes.append(f"random gate not planned for {', '.join(missing)}: the GradProm run logged no "
                   "gate-open rate (failed?)")
      failed.extend(f"random_gate after {label}" for label in missing)
    stage(f"random_gate, seed {seed}", runs, args)

  lambdas = list(options.lambdas)
  for index, seed in enumerate(options.seeds):
    seed_stages(seed, lambdas)
    if index == 0 and options.extend_grid:
      decision = grid_extension(options, workdir, task_metric=task_metrics[0],
                                task_gain=largest_task_gain(task_gains, task_metrics[0]))
      added = [w for w in decision["added"] if w not in lambdas]
      notes.append(f"grid extension (seed {seed}, validation): λ "
                   + (", ".join(f"{w:g}" for w in added) + " added" if added else "unchanged")
                   + f" (task gain at the largest λ {decision['best_task_gain_at_largest_lambda']:.4f}"
                   f" against {decision['task_gain']:g}; PSNR loss at the smallest λ "
                   f"{decision['largest_psnr_loss_at_smallest_lambda']:.3f} dB)")
      if added:
        seed_stages(seed, added)
        lambdas += added
  options = dataclasses.replace(options, lambdas=tuple(lambdas))
  weight = (options.probe_lambda if options.probe_lambda is not None
            else chosen_gradprom_lambda(options, workdir, task_metrics[0]))
  if "gradprom" not in options.methods:
    notes.append("gate probes skipped: gradprom is not among --methods")
  elif weight is None:
    notes.append("gate probes skipped: no λ chosen (enhance_only or GradProm seed-"
                 f"{options.seeds[0]} runs missing)")
    failed.append("gate probes")
  else:
    notes.append(f"gate probes at λ = {weight:g}")
    stage("gate_probes", probe_runs(options, workdir, weight), args)
  print_fn("== report", flush=True)
  notes += write_reports(grid_dir(workdir, options), task_metrics=task_metrics, setting=setting,
                         report_script=report_script, gradprom="gradprom" in options.methods,
                         task_gains=task_gains)
  text = ["# Study", "", f"Setting: {setting}", "", f"Command: `{command}`", "",
          *(f"- {note}" for note in notes), "",
          (f"**Failed ({len(failed)}):** " + ", ".join(failed)) if failed else "No run failed."]
  (grid_dir(workdir, options) / REPORT_FILENAME).write_text("\n".join(text) + "\n")
  for note in notes:
    print_fn(note)
  return failed


class StudyError(RuntimeError):
  """A stage failed in a way that leaves the later stages nothing to run on."""


def write_reports(directory: Path, *, task_metrics: Sequence[str], setting: str,
                  report_script: str | Path, gradprom: bool, task_gains: Sequence[str] = ()
                  ) -> list[str]:
  """Runs evidence_report.py's ``fronts`` (every task metric), then ``select`` and ``report`` (the
  first task metric); returns one line per report: written, unavailable or failed."""
  metric_args = [arg for m in task_metrics for arg in ("--task_metric", m)]
  gain_args = [arg for gains in task_gains for arg in ("--task_gains", gains)]
  calls = {"fronts.md": ["fronts", str(directory), *metric_args, *gain_args, "--setting", setting]}
  if gradprom:
    calls["lambda_selection.md"] = ["select", str(directory), "--task_metric", task_metrics[0]]
    calls["report.md"] = ["report", str(directory), "--task_metric", task_metrics[0],
                          "--setting", setting]
  lines = []
  for filename, arguments in calls.items():
    result = subprocess.run([sys.executable, str(report_script), *arguments], capture_output=True,
                            text=True, check=False)
    if result.returncode == 0:
      lines.append(f"{arguments[0]}: wrote {directory / filename}")
    elif f"invalid choice: '{arguments[0]}'" in result.stderr:
      lines.append(f"{arguments[0]}: UNAVAILABLE ({Path(report_script).name} has no "
                   f"`{arguments[0]}` subcommand in this checkout); {filename} not written")
    else:
      tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
      lines.append(f"{arguments[0]}: FAILED (exit code {result.returncode}): " + " / ".join(tail))
  return lines
