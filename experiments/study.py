r"""The study protocol as one command, for any dataset; intentionally short.

Does GradProm's gate buy a better quality–task trade-off than simply adding less task gradient?
Runs, under --workdir, the pre-trained recognisers and the judge, the grid of methods × λ × seeds
(with enhance_only, and two_stage when fine-tuned), the random-gate control at GradProm's own
gate-open rate per λ and seed, the gate-reliability probes, then the reports
(`experiments/evidence_report.py fronts`, `select`, `report`). Running the same command again resumes:
finished runs are skipped, a run killed mid-way restarts from its newest checkpoint. The logic lives
in `experiments.tools.study` (stages) and `...worker_pool` (parallel workers).

  # the embedded synthetic data (segmentation, Dice)
  python experiments/study.py --config configs/default.py --workdir workdirs/study_default
  # PneumoniaMNIST (classification: AUC and balanced accuracy), recognisers fine-tuned
  python experiments/study.py --config configs/pneumoniamnist.py \
      --config.data.data_dir=$HOME/tensorflow_datasets --regime finetuned \
      --workdir workdirs/study_pneumoniamnist
  # your own folder of images/ and masks/ (configs/image_folder.py says how to lay it out)
  python experiments/study.py --config configs/image_folder.py --config.data.manual_dir=/data/mine \
      --config.data.mask_pattern='{id}_segmentation.png' --workdir workdirs/study_mine
  # minutes, not hours: the smoke config, 2 λ, 2 methods, 1 seed
  python experiments/study.py --config configs/default.py:smoke --workdir /tmp/study \
      --seeds 0 --lambdas 0.1,1 --methods gradprom,joint --steps 6 --recognizer_steps 6 \
      --probe_batches 4,8

`--config.KEY=VALUE` overrides apply to every run (and win over the study's schedules). A variant
`--variant NAME:KEY=VALUE[,KEY=VALUE...]` is swept over λ as rows NAME_l<λ>, so it joins the fronts.
"""
import shlex
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repository: experiments.tools
from experiments.tools import comparison, study, worker_pool  # noqa: E402

_DEFAULTS = study.StudyOptions()
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file of every run (overrides with --config.KEY=VALUE).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory: recognizers/, <regime>/.")
_REGIME = flags.DEFINE_enum("regime", _DEFAULTS.regime, study.REGIMES,
                            "The recognisers frozen, or fine-tuned with the enhancer.")
_SEEDS = flags.DEFINE_list("seeds", [str(s) for s in _DEFAULTS.seeds], "Paired seeds.")
_LAMBDAS = flags.DEFINE_list("lambdas", [f"{w:g}" for w in _DEFAULTS.lambdas], "Task weights λ.")
_METHODS = flags.DEFINE_list("methods", list(_DEFAULTS.methods),
                             f"Grid methods: config methods or {', '.join(study.GRID_METHODS)}.")
_VARIANTS = flags.DEFINE_multi_string(
    "variant", [], "Extra grid row NAME:KEY=VALUE[,...], swept over λ as NAME_l<λ>.")
_WORKERS = flags.DEFINE_integer(
    "workers", None, "Runs at once, each pinned to its share of the cores, single-threaded when "
    "more than one (default: one per usable core).")
_TASK_METRICS = flags.DEFINE_list(
    "task_metric", None, "Task metrics of the fronts (default: auc,balanced_accuracy for "
    "classification, dice for segmentation).")
_SETTING = flags.DEFINE_string("setting", None, "The setting's name in the reports.")
_STEPS = flags.DEFINE_integer("steps", _DEFAULTS.steps, "Training steps of every run but the "
                              "recognisers' (warm-up, logging, evaluation scale with it).")
_RECOGNIZER_STEPS = flags.DEFINE_integer("recognizer_steps", _DEFAULTS.recognizer_steps,
                                         "Training steps of the recognisers and the judge.")
_JUDGE_SEED = flags.DEFINE_integer("judge_seed", _DEFAULTS.judge_seed, "The judge's seed.")
_PROBE_BATCHES = flags.DEFINE_list("probe_batches", [str(b) for b in _DEFAULTS.probe_batches],
                                   "Batch sizes of the gate-reliability probes.")
_PROBE_LAMBDA = flags.DEFINE_float("probe_lambda", None, "λ of the probes (default: GradProm's λ "
                                   "chosen on validation).")
_PROBE_EVERY = flags.DEFINE_integer("probe_every", _DEFAULTS.probe_every,
                                    "Steps between two gate-reliability probes of a probe run.")
_TASK_GAINS = flags.DEFINE_multi_string(
    "task_gains", [], "Matched task gains of the fronts: g1,g2 for every metric or METRIC=g1,g2 "
    "(repeat per metric); default: evidence_report.py fronts's.")
_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", None, "JAX compilation cache shared by the runs (default "
    "DIR/jax_cache; '' turns it off). Changes no result.")
_EXTEND_GRID = flags.DEFINE_bool(
    "extend_grid", False, "After the first seed, add λ beyond either end of --lambdas where its "
    "validation results say the grid does not reach enhancement-only or the largest --task_gains "
    "gain (kept in <regime>/grid_extension.json).")
_RUN = flags.DEFINE_bool("run", True, "--norun prints the plan only.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    options = study.StudyOptions(
        regime=_REGIME.value, seeds=tuple(int(s) for s in _SEEDS.value),
        lambdas=tuple(float(w) for w in _LAMBDAS.value), methods=tuple(_METHODS.value),
        variants=tuple(_VARIANTS.value), judge_seed=_JUDGE_SEED.value,
        recognizer_steps=_RECOGNIZER_STEPS.value, steps=_STEPS.value,
        probe_batches=tuple(int(b) for b in _PROBE_BATCHES.value), probe_lambda=_PROBE_LAMBDA.value,
        probe_every=_PROBE_EVERY.value, extend_grid=_EXTEND_GRID.value)
    config_args = comparison.forwarded_config_args(flags.FLAGS["config"])
    for stage, rows in study.planned_stages(options):
      print(f"{stage}: {', '.join(rows) or '—'}")
    if not _RUN.value:
      return
    workdir = Path(_WORKDIR.value)
    config_name = Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
    failed = study.run_study(
        config_args, options, workdir,
        task_metrics=_TASK_METRICS.value or study.default_task_metrics(
            _CONFIG.value.task.recognition),
        setting=_SETTING.value or f"{config_name}, {options.regime} recogniser, "
                                  f"{options.steps} steps",
        report_script=Path(__file__).with_name("evidence_report.py"),
        task_gains=tuple(_TASK_GAINS.value),
        workers=_WORKERS.value or worker_pool.default_workers(),
        cache_dir=(workdir / "jax_cache" if _CACHE_DIR.value is None else _CACHE_DIR.value),
        command=shlex.join([sys.executable, *sys.argv]))
  except (ValueError, study.StudyError) as e:   # a bad flag, a refused workdir, failed recognisers
    sys.exit(f"study.py: {e}")
  print(f"Wrote {study.grid_dir(workdir, options) / study.REPORT_FILENAME}.")
  if failed:
    sys.exit(f"{len(failed)} run(s) or stage(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  app.run(main)
