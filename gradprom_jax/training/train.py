"""The training loop: ``train_and_evaluate(experiment, workdir)`` runs a whole experiment.

It takes the run's config parsed once (:class:`~gradprom_jax.training.experiment.Experiment`) and
reads no config key itself; the config travels along only to be stored and compared as
``config.json``.

Resumable at any moment: running it again on the same workdir continues from the newest checkpoint
(parameters, optimiser states with GradProm's counters, step, RNG and the data iterator position).

Workdir outputs:
  config.json        the run's config (a different config refuses to resume unless overwrite)
  checkpoints/       orbax checkpoints, every ``checkpoint_every`` steps and at the end; with
                     ``checkpoint_best_metric`` also the one that scored best on validation
  metrics.jsonl      one JSON object per logging step and per evaluation
  tensorboard/       TensorBoard event files
  results.json       test-set metrics of the system and of the two references, and the step scored
  samples.png        degraded | enhanced | high quality | prediction, for a few test examples
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from gradprom_jax import data as data_lib
from gradprom_jax.configuration.config_validation import (ConfigError, check_dataset_has_targets,
                                                          parse_tasks)
from gradprom_jax.configuration.run_spec import parse_model_spec
from gradprom_jax.core.image_dtype import to_unit_float
from gradprom_jax.core.system import ModelSpec, TaskDrivenSystem, create_system
from gradprom_jax.core.task_config import RecognitionTask, TaskConfig
from gradprom_jax.tasks import task_kind
from gradprom_jax.tasks.class_weights import balanced_class_weights
from gradprom_jax.training import evaluation, parallel as parallel_lib, pretrained, visualization
from gradprom_jax.training.checkpoint_layout import check_tasks_by_name
from gradprom_jax.training.checkpointing import (CheckpointRestoreError, Checkpointer,
                                                 ensure_writable_directory, has_checkpoint)
from gradprom_jax.training.distributed import initialize_distributed
from gradprom_jax.training.experiment import Experiment, parse_experiment
from gradprom_jax.training.gate_reliability import make_gate_probe
from gradprom_jax.training.host_agreement import fail_together
from gradprom_jax.training.metric_logging import MetricLogger, OneLogStepBehind
from gradprom_jax.training.optimizers import make_enhancer_tx, make_recognizer_tx
from gradprom_jax.training.periodic_actions import (StepEnd, TrainingStopped, loop_actions,
                                                    run_due_actions)
from gradprom_jax.training.phases import Phase, make_phases, phase_at, run_length
from gradprom_jax.training.preemption import PreemptionGuard
from gradprom_jax.training.prefetch import DevicePrefetcher, device_placer
from gradprom_jax.training.pretrained import MODEL_INFO_FILENAME
from gradprom_jax.training.run_config import (CONFIG_FILENAME, check_or_save_config,
                                              check_stored_config, config_differences)
from gradprom_jax.training.train_state import TrainState, initial_state
from gradprom_jax.training.train_step import make_train_step
from gradprom_jax.training.workdir_lock import lock_workdir

RESULTS_FILENAME = "results.json"
SAMPLES_FILENAME = "samples.png"


class NonFiniteTrainingError(RuntimeError):
  """Too many consecutive steps had non-finite losses or gradients."""


def task_class_names(recognition: str, dataset: Any) -> tuple[str, ...]:
  """A recogniser's output classes on ``dataset``, as its task kind reads them (the mask classes
  for segmentation, the image labels for classification)."""
  return task_kind(recognition).class_names(dataset)


def recognizer_class_names(tasks: TaskConfig, dataset: Any) -> dict[str, tuple[str, ...]]:
  """Each recogniser's output classes (:func:`task_class_names`), by task name."""
  return {task.name: task_class_names(task.recognition, dataset) for task in tasks.tasks}


def resolve_class_weights(task: RecognitionTask, dataset: Any) -> tuple[float, ...] | None:
  """A task's ``class_weights`` as numbers: ``"balanced"`` from the training split's class counts."""
  weights = task.class_weights
  if weights != "balanced":
    return None if weights is None else tuple(float(w) for w in weights)
  counts = dataset.class_counts["train"]
  try:
    weights = balanced_class_weights(counts)
  except ValueError:
    raise ConfigError(f"{task.config_prefix}class_weights='balanced': the training split has no "
                      f"examples of {[n for n, c in zip(dataset.class_names, counts) if not c]}; "
                      "give explicit weights or fix the data.") from None
  logging.info("Class weights (balanced)%s: %s", f" of {task.name}" if task.config_prefix != "task."
               else "", ", ".join(f"{name} {w:.3g}" for name, w in zip(dataset.class_names, weights)))
  return weights


def build_system(config: ml_collections.ConfigDict, dataset: Any) -> TaskDrivenSystem:
  """The system ``config`` describes for ``dataset``'s images and classes (for tools that hold a
  config; the loop builds its system from the parsed experiment, :func:`system_for_dataset`)."""
  return system_for_dataset(parse_model_spec(config), parse_tasks(config), dataset)


def system_for_dataset(model: ModelSpec, tasks: TaskConfig, dataset: Any) -> TaskDrivenSystem:
  """The system of ``model`` and ``tasks`` for ``dataset``'s images and classes (its class
  weights resolved from the training split)."""
  num_classes = {task.name: len(task_class_names(task.recognition, dataset))
                 for task in tasks.tasks}
  weights = {task.name: resolve_class_weights(task, dataset) for task in tasks.tasks}
  return create_system(model, tasks, channels=dataset.image_shape[-1],
                       num_classes=num_classes, class_weights=weights)


def model_info(system: TaskDrivenSystem, dataset: Any, tasks: TaskConfig) -> dict[str, Any]:
  """``model_info.json``: what ``experiments/enhance.py`` needs to rebuild the models without the
  dataset: ``num_classes`` and ``class_names`` in the file's form
  (:func:`pretrained.model_info_form`)."""
  class_names = {name: list(names)
                 for name, names in recognizer_class_names(tasks, dataset).items()}
  return {"image_shape": list(dataset.image_shape),
          "num_classes": pretrained.model_info_form(system, system.num_classes),
          "class_names": pretrained.model_info_form(system, class_names),
          "recognition": system.recognition}


def _write_json(path: Path, payload: dict[str, Any]) -> None:
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def _save_samples(path: Path, system: TaskDrivenSystem, state: TrainState, dataset: Any,
                  num_samples: int, parallel: parallel_lib.DataParallel) -> None:
  """Draws the first test examples; every process computes (it is a collective), process 0 writes.

  With several tasks, the first task of each kind is drawn (the masks and the classes together).
  """
  devices = parallel.num_devices
  batch_size = -(-max(num_samples, 1) // devices) * devices
  loader = data_lib.make_eval_loader(dataset, "test", global_batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
  local_batch = next(iter(loader))
  batch = parallel.put_global_batch(local_batch)
  predict_step = jax.jit(evaluation.make_predict_step(system))
  state = state.for_evaluation()
  out = evaluation.to_host(predict_step(state.enhancer_params, state.recognizer_params, batch, 0))
  host_batch = evaluation.to_host(batch)
  keep = np.flatnonzero(host_batch["valid"])[:num_samples]
  drawn = {}   # kind name -> the first task of that kind
  for head in system.heads:
    probabilities = out["probabilities"][head.name]
    drawn.setdefault(head.recognition, visualization.DrawnTask(
        head.kind, head.kind.predictions(probabilities[keep]), host_batch[head.target_key][keep],
        getattr(dataset, "class_names", None)))
  if jax.process_index() == 0:
    visualization.save_sample_grid(
        path, degraded=out["degraded"][keep], enhanced=out["enhanced"][keep],
        high_quality=to_unit_float(host_batch["image"][keep]), tasks=list(drawn.values()))


def _eval_batch_size(batch_size: int, parallel) -> int:
  """The eval batch: the train batch rounded up to a multiple of the device count."""
  devices = parallel.num_devices
  return -(-batch_size // devices) * devices


def _check_best_metric(metric: str, validation: dict[str, float]) -> None:
  """checkpoint_best_metric must name a key of the validation record."""
  if metric.lstrip("-") not in validation:
    raise ConfigError(f"checkpoint_best_metric={metric!r} is not a validation metric of this run; "
                      f"choose one of: {', '.join(sorted(validation))}.")


def _restore_best(checkpointer: Checkpointer, target: TrainState) -> tuple[TrainState, int]:
  """The best-on-validation state and its step."""
  restored = checkpointer.restore_best(target)
  logging.info("Scoring the test set with the best checkpoint, step %d.", restored[1])
  return restored


def _refuse_separate_best_checkpoints(workdir: str | os.PathLike[str]) -> None:
  """A workdir of the earlier layout, whose best checkpoint sat apart in ``checkpoints_best/``."""
  legacy = Path(workdir) / "checkpoints_best"
  if legacy.is_dir():
    raise CheckpointRestoreError(
        f"{legacy} is of an earlier layout (checkpoints/ now keeps the best checkpoint too); "
        "delete it to resume this run, whose best is then chosen among the evaluations from here on")


def finished_results_path(workdir: str | os.PathLike[str],
                          experiment: Experiment) -> Path | None:
  """``workdir/results.json`` if the workdir holds this experiment's finished run, else None.

  A run is finished once ``results.json`` is written (the last output, after ``samples.png``) for
  this run length, with a stored ``config.json`` equal to the experiment's config (ignoring what
  may change on resume, such as how often to log).

  >>> import tempfile
  >>> from gradprom_jax.configuration.config import base_config
  >>> print(finished_results_path(tempfile.mkdtemp(), parse_experiment(base_config())))
  None
  """
  results_path, config_path = Path(workdir) / RESULTS_FILENAME, Path(workdir) / CONFIG_FILENAME
  try:
    results = json.loads(results_path.read_text())
    stored_config = json.loads(config_path.read_text())
  except (OSError, ValueError):   # absent, unreadable or cut short: not finished
    return None
  length = experiment.num_train_steps
  if (results.get("num_train_steps") != length or stored_config.get("num_train_steps") != length
      or config_differences(stored_config, experiment.config)):
    return None
  return results_path


def train_and_evaluate(experiment: Experiment | ml_collections.ConfigDict, workdir: str, *,
                       reevaluate: bool = False) -> dict[str, Any] | None:
  """Trains and evaluates ``experiment`` (a config is parsed into one first, see
  :func:`~gradprom_jax.training.experiment.parse_experiment`), writing everything to ``workdir``.

  A workdir that already holds this experiment's finished run (see :func:`finished_results_path`)
  is not touched: its stored results are returned at once, before the dataset is built, unless
  ``reevaluate``, which restores the final checkpoint and scores the test set again (rewriting
  ``results.json``, ``samples.png`` and the test record of ``metrics.jsonl``).

  Returns:
    The test results (also in ``results.json``), or None if the run was preempted (SIGTERM/SIGINT):
    then a checkpoint was saved and running again resumes.
  """
  if not isinstance(experiment, Experiment):
    experiment = parse_experiment(experiment)
  initialize_distributed(experiment.distributed)
  parallel = parallel_lib.DataParallel(experiment.parallel)
  experiment.check_devices(parallel.num_devices)
  tasks, config = experiment.tasks, experiment.config
  is_main = jax.process_index() == 0
  # Every config error is raised before the workdir is touched: a bad command leaves nothing behind.
  # A workdir of another run is refused before the (possibly long) dataset build, writing nothing.
  lock = None
  try:
    # The checks below may fail on one host only (its disk, its data, the lock process 0 takes):
    # every host then raises the same error instead of the others waiting in a collective.
    with fail_together():
      check_stored_config(workdir, config, overwrite=experiment.overwrite)
      finished = finished_results_path(workdir, experiment)
      if finished is not None and not reevaluate:
        logging.info("Already finished, results in %s.", finished)
        return json.loads(finished.read_text())
      _refuse_separate_best_checkpoints(workdir)
      check_tasks_by_name(workdir, CheckpointRestoreError)
      dataset = data_lib.load_dataset(experiment.data)
      check_dataset_has_targets(tasks, dataset)
      experiment.check_dataset(dataset.image_shape, recognizer_class_names(tasks, dataset))
      # Other runs' models the config names are read before the workdir is touched, so a missing
      # or mismatched one leaves nothing behind. Warm starts are for a fresh start only.
      system = system_for_dataset(experiment.spec.run.model, tasks, dataset)
      fresh_start = not has_checkpoint(Path(workdir) / "checkpoints")
      init_params = (pretrained.load_init_params(experiment.init_from, system,
                                                 dataset.image_shape, sharding=parallel.replicated)
                     if fresh_start else {})
      judge = pretrained.load_judge(experiment.judge_workdir, system, dataset.image_shape,
                                    data_name=dataset.name, sharding=parallel.replicated)
      workdir = ensure_writable_directory(workdir)
      lock = lock_workdir(workdir, enabled=is_main)   # one live run per workdir, before any write
    return _train_and_evaluate_locked(RunContext(
        experiment=experiment, workdir=workdir, parallel=parallel, dataset=dataset, system=system,
        init_params=init_params, judge=judge))
  finally:
    if lock is not None:
      lock.release()


@dataclasses.dataclass(frozen=True)
class RunContext:
  """A run whose config is valid and whose workdir this process holds: what the loop works with.

  Attributes:
    experiment: the run's parsed config.
    workdir: its (writable) workdir.
    parallel: how states and batches are placed on the devices.
    dataset: the built dataset.
    system: the models, degradation and losses for the dataset.
    init_params: train-state field -> params, replacing the fresh state's at a fresh start.
    judge: the fixed recogniser that scores the enhanced images, or None.
  """
  experiment: Experiment
  workdir: Path
  parallel: parallel_lib.DataParallel
  dataset: Any
  system: TaskDrivenSystem
  init_params: dict[str, Any]
  judge: pretrained.Judge | None

  @property
  def is_main(self) -> bool:
    """Whether this is process 0, the one that writes the workdir's files."""
    return jax.process_index() == 0


def _train_and_evaluate_locked(run: RunContext) -> dict[str, Any] | None:
  """`train_and_evaluate` once the config is valid and this process holds the workdir."""
  experiment = run.experiment
  spec = experiment.spec
  check_or_save_config(run.workdir, experiment.config, overwrite=experiment.overwrite,
                       write=run.is_main)
  if run.is_main:   # what `experiments/enhance.py` needs to rebuild the models without the dataset
    _write_json(run.workdir / MODEL_INFO_FILENAME,
                model_info(run.system, run.dataset, experiment.tasks))
  phases = make_phases(spec.phases)
  enhancer_tx = make_enhancer_tx(spec.optimizer, phases, spec.run.method, experiment.tasks)
  recognizer_tx = make_recognizer_tx(spec.optimizer, phases, experiment.tasks)
  train_iter = _train_batches(run)
  # The newest keep_checkpoints, and the one that scored best on validation (however old).
  checkpointer = Checkpointer(run.workdir / "checkpoints",
                              save_interval_steps=experiment.intervals.checkpoint_every,
                              max_to_keep=experiment.checkpoints.keep,
                              best_metric=experiment.checkpoints.best_metric)
  state = _starting_state(run, checkpointer, train_iter, enhancer_tx, recognizer_tx)
  start_step = int(jax.device_get(state.step))
  evaluate = _evaluator(run)
  total_steps = run_length(phases)   # num_train_steps, except for two_stage's two stages
  # The test record is rewritten at the end of every start (a resumed or re-evaluated run).
  logger = MetricLogger(run.workdir, total_steps=total_steps, start_step=start_step,
                        enabled=run.is_main, replace_kinds=("test",))
  with (logger, PreemptionGuard(check_every=experiment.preemption_check_every) as guard,
        checkpointer):
    loop = _TrainLoop(run, phases, enhancer_tx, recognizer_tx, evaluate=evaluate, logger=logger,
                      checkpointer=checkpointer, train_iter=train_iter)
    state = loop.train(run.parallel.put_state(state), start_step, guard)
    if state is None:
      return None
    tested_state, tested_step = state, total_steps
    if experiment.checkpoints.test_on_best:
      tested_state, tested_step = _restore_best(checkpointer, state)
    results = evaluate("test", tested_state)
    logger.log_eval(total_steps, results, prefix="test")
  results.update(method=experiment.method, seed=experiment.seed,
                 num_train_steps=experiment.num_train_steps,
                 nonfinite_steps=int(jax.device_get(state.nonfinite_total)),
                 evaluated_step=tested_step)
  _save_samples(run.workdir / SAMPLES_FILENAME, run.system, tested_state, run.dataset,
                experiment.num_samples, run.parallel)
  if run.is_main:   # last: results.json marks the run finished (see finished_results_path)
    _write_json(run.workdir / RESULTS_FILENAME, results)
  return results


def _train_batches(run: RunContext) -> DevicePrefetcher:
  """The training batches, each ``(host batch, batch placed on the devices)``."""
  batching = run.experiment.input
  batches = iter(data_lib.make_train_loader(
      run.dataset, global_batch_size=batching.batch_size, seed=run.experiment.seed,
      patch_size=batching.patch_size, process_index=jax.process_index(),
      process_count=jax.process_count(), num_workers=batching.num_workers,
      read_buffer=batching.read_buffer))
  # The next data.prefetch batches are copied to the devices while a step runs; the checkpointed
  # position stays that of the last batch trained on.
  place_batch = device_placer(run.parallel)
  return DevicePrefetcher(batches, lambda b: (b, place_batch(b)), size=batching.prefetch)


def _starting_state(run: RunContext, checkpointer: Checkpointer, train_iter: DevicePrefetcher,
                    enhancer_tx: Any, recognizer_tx: Any) -> TrainState:
  """The newest checkpoint's state (``train_iter`` moved to its position), else a fresh one, warm
  started from ``run.init_params``."""
  state = initial_state(run.experiment.seed, run.system, run.dataset.image_shape, enhancer_tx,
                        recognizer_tx, sharding=run.parallel.replicated)
  restored = checkpointer.restore_latest(state, train_iter)
  if restored is not None:
    logging.info("Resuming from step %d.", restored[1])
    return restored[0]
  if run.init_params:
    # The optimiser states do not depend on the params' values, except the enhancer's parameter
    # average (optim.ema_decay), which must start at the warm-started params.
    state = state.replace(**run.init_params)
    state = state.replace(enhancer_opt_state=jax.jit(
        enhancer_tx.init, out_shardings=run.parallel.replicated)(state.enhancer_params))
  return state


def _evaluator(run: RunContext) -> Callable[[str, TrainState], dict[str, float]]:
  """``evaluate(split, global_state) -> metrics``, one compiled eval step for every split."""
  eval_step = jax.jit(evaluation.make_eval_step(run.system, run.judge and run.judge.system))
  batch_size = _eval_batch_size(run.experiment.input.batch_size, run.parallel)

  def evaluate(split: str, global_state: TrainState) -> dict[str, float]:
    loader = data_lib.make_eval_loader(run.dataset, split, global_batch_size=batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())
    # A plain jit program in both parallel modes: global state, batch split over the mesh.
    results = evaluation.evaluate(run.system, eval_step, global_state.for_evaluation(), loader,
                                  run.parallel.put_global_batch, batch_size,
                                  judge_params=run.judge and run.judge.params)
    # recognizer_only never trains its enhancer: scores of its outputs would mean nothing.
    recognizer_only = run.experiment.method == "recognizer_only"
    return evaluation.without_enhancer_scores(results) if recognizer_only else results
  return evaluate


class _CompiledSteps:
  """Each phase's train step, compiled when the phase is first reached, and what the next train
  record needs: every step's non-finite streak and the steps timed since the last record."""

  def __init__(self, build: Callable[[Phase], Callable], compile_step: Callable,
               logger: MetricLogger, several_phases: bool):
    self._build, self._compile, self._logger = build, compile_step, logger
    self._several_phases = several_phases
    self._steps: dict[str, Callable] = {}
    self._streaks: list[Any] = []
    self._timed, self._started = 0, time.time()

  def __call__(self, phase: Phase, state: Any, batch: Any) -> tuple[Any, dict[str, Any]]:
    """Runs ``phase``'s step; returns once it is compiled and dispatched (it runs asynchronously)."""
    compiling = phase.name not in self._steps
    label = f" ({phase.name} phase)" if self._several_phases else ""
    if compiling:
      self._steps[phase.name] = self._compile(self._build(phase))
      self._logger.write(f"compiling the train step{label}...")
      compile_started = time.time()
    state, metrics = self._steps[phase.name](state, batch)
    if compiling:
      self._logger.write(f"compiled the train step{label} in "
                         f"{time.time() - compile_started:.1f} s")
      self._started, self._timed = time.time(), 0   # steps_per_second counts steps, not compiles
    self._timed += 1
    # Every step's non-finite streak, fetched at the next log: a streak that ends between two
    # logs must still stop the run. No device op here: even a max waits for the step on CPU.
    self._streaks.append(metrics["nonfinite_streak"])
    return state, metrics

  def since_last_record(self) -> tuple[list[Any], int, float]:
    """The streaks, the number of steps timed and when timing started, since the last call."""
    taken = (self._streaks, self._timed, self._started)
    self._streaks, self._timed, self._started = [], 0, 0.0
    return taken


class _TrainLoop:
  """The steps from a start step to the run's end: each runs the phase's compiled step, then each
  due periodic action (:mod:`gradprom_jax.training.periodic_actions`)."""

  def __init__(self, run: RunContext, phases: tuple[Phase, ...], enhancer_tx: Any,
               recognizer_tx: Any, *, evaluate: Callable[[str, TrainState], dict[str, float]],
               logger: MetricLogger, checkpointer: Checkpointer, train_iter: DevicePrefetcher):
    self.run, self.phases, self.evaluate = run, phases, evaluate
    self.logger, self.checkpointer, self.train_iter = logger, checkpointer, train_iter
    experiment, parallel = run.experiment, run.parallel
    self.steps = _CompiledSteps(
        lambda phase: make_train_step(
            run.system, phase, enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
            task_weight=experiment.tasks.task_weight, axis_name=parallel.axis_name,
            accumulate_steps=experiment.accumulate_steps),
        parallel.compile_step, logger, several_phases=len(phases) > 1)
    # A log step's metrics are read at the next log step (the last at the end), so the host never
    # waits on the step it has just dispatched; a non-finite streak stops the run one log later.
    self.train_log = OneLogStepBehind(self._write_train_record)
    self._last_read = time.time()
    self._gate_probe = None   # compiled at the first probe

  def train(self, device_state: Any, start_step: int, guard: PreemptionGuard
            ) -> TrainState | None:
    """Trains from ``start_step`` to the end; returns the final (global) state, or None when
    stopped by ``guard`` (then saved)."""
    total_steps = run_length(self.phases)
    actions = loop_actions(
        self.run.experiment.intervals, train_log=self.train_log, train_record=self._train_record,
        probe_gate=self._probe_gate, validate=self._validate, save_checkpoint=self._save_checkpoint,
        stop_requested=guard.should_stop_all_hosts)
    try:
      for step in range(start_step, total_steps):
        phase = phase_at(self.phases, step)
        local_batch, device_batch = next(self.train_iter)
        device_state, metrics = self.steps(phase, device_state, device_batch)
        done = step + 1
        self.logger.advance(done)   # counts dispatched steps: no host sync
        run_due_actions(actions, StepEnd(done, done == total_steps, phase, state=device_state,
                                         batch=local_batch, metrics=metrics))
    except TrainingStopped as stop:
      self._end(stop.done, device_state)
      logging.warning("Stopped by %s at step %d; checkpoint saved.", guard.signal_name, stop.done)
      return None
    return self._end(total_steps, device_state)

  def _end(self, done: int, device_state: Any) -> TrainState:
    """Training's one way out, at the end or on a stop: the held record written, the state saved
    (a step already saved is not written twice) and the write waited for. Returns the state."""
    self.train_log.flush()
    state = self.run.parallel.global_state(device_state)
    self.checkpointer.save(done, state, self.train_iter, force=True)
    self.checkpointer.wait_until_finished()
    return state

  def _train_record(self, end: StepEnd) -> tuple:
    streaks, timed, started = self.steps.since_last_record()
    return end.metrics, streaks, self.phases.index(end.phase), timed, started

  def _write_train_record(self, done: int, record: tuple) -> None:
    """Logs a log step's metrics (read now, one log step later) and stops a non-finite streak."""
    step_metrics, step_streaks, phase_index, timed, clock_started = record
    host_metrics = self.run.parallel.metrics_to_host(step_metrics)   # waits for step `done`
    streak = int(max(np.max(s) for s in jax.device_get(step_streaks)))
    # Steps computed per second since the previous log step was read (or a compile ended).
    read = time.time()
    host_metrics["steps_per_second"] = timed / max(read - max(self._last_read, clock_started),
                                                   1e-9)
    self._last_read = read
    self.logger.log_train(done, {"phase": phase_index, **host_metrics})
    limit = self.run.experiment.max_nonfinite_steps
    if streak >= limit:
      raise NonFiniteTrainingError(
          f"{streak} consecutive steps (by step {done}) had non-finite losses or gradients "
          f"(max_nonfinite_steps={limit}); they were skipped, and the "
          f"last good checkpoint in {self.checkpointer.directory} is intact.")

  def _probe_gate(self, end: StepEnd) -> None:
    """Do the two halves of the batch just used agree on the cosine's sign? (The updated
    parameters, the step's degradation noise.) A train record of gate_probe/* values."""
    parallel = self.run.parallel
    self._gate_probe = self._gate_probe or make_gate_probe(self.run.system)
    self.logger.log_train(end.done, self._gate_probe(parallel.global_state(end.state),
                                                     parallel.put_global_batch(end.batch),
                                                     end.done - 1))

  def _validate(self, end: StepEnd) -> dict[str, float]:
    validation = self.evaluate("validation", self.run.parallel.global_state(end.state))
    self.logger.log_eval(end.done, validation)
    best_metric = self.run.experiment.checkpoints.best_metric
    if best_metric is not None:
      _check_best_metric(best_metric, validation)
    return validation

  def _save_checkpoint(self, end: StepEnd) -> None:
    self.checkpointer.save(end.done, self.run.parallel.global_state(end.state), self.train_iter,
                           force=end.is_last, metrics=end.validation)
