"""Every option of a training run, with its default, in one `ml_collections.ConfigDict`.

Config files in ``configs/`` start from :func:`base_config` and override a few fields, as the Flax
examples do; any field can be overridden on the command line (``--config.method=joint``). Lists of
valid values live here too, so a bad config fails before anything is compiled.
"""
from __future__ import annotations

import ml_collections

from gradprom_jax import methods
from gradprom_jax.core.degradations import parse_degradation
from gradprom_jax.core.task_config import GATE_OPTIONS
from gradprom_jax.data import DATASETS
from gradprom_jax.data.config import default_data_config
from gradprom_jax.tasks import TASK_KINDS, task_kind

PARALLEL_MODES = ("mesh", "pmap")
RECOGNIZER_INPUTS = ("enhanced", "high_quality", "both")
MODEL_DTYPES = ("float32", "bfloat16")
WEIGHT_DECAY_MASKS = ("kernels", "all")   # optim.weight_decay_mask
DISTRIBUTED_MODES = ("auto", "explicit", "off")   # distributed.mode


def __getattr__(name: str):
  # METHODS, the valid values of config.method, read from the registry when asked (a method
  # registered after this module was imported is among them).
  if name == "METHODS":
    return methods.method_names()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def base_config() -> ml_collections.ConfigDict:
  """The defaults: embedded synthetic lesions, noisy ×4 super-resolution + lesion segmentation, GradProm.

  >>> config = base_config()
  >>> config.method, config.task.recognition, config.task.degradation
  ('gradprom', 'segmentation', 'downsample(scale=4) > gaussian_noise(sigma=0.05)')
  """
  config = ml_collections.ConfigDict()
  # How the enhancer's update is made: a combination method (a module of gradprom_jax.methods), or
  # a schedule that trains one model at a time (gradprom_jax.methods.schedules).
  config.method = "gradprom"
  config.seed = 0
  config.num_train_steps = 500
  # Global batch size over all devices and hosts.
  config.batch_size = 8
  config.log_every = 25
  # Every this many steps, log cos(g_e, g_t) on each half of the batch and whether their signs agree
  # (gate_probe/*: how reproducible the gate's decision is; see gradprom_jax.training.gate_reliability).
  # 0: off. Each probe costs about two train steps' gradients.
  config.gate_reliability_every = 0
  config.eval_every = 250
  config.checkpoint_every = 250
  config.keep_checkpoints = 3
  # Also keep the checkpoint with the best validation score of this metric (a key of the validation
  # record, e.g. "psnr", "dice", "auc"; higher is better, a "-" prefix means lower is better) in
  # checkpoints/, however old; a new best is saved off the checkpoint_every interval. None: off.
  config.checkpoint_best_metric = ml_collections.config_dict.placeholder(str)
  # Score the test set (results.json, samples.png) with that best checkpoint instead of the last;
  # results.json's evaluated_step says which step was scored. Needs checkpoint_best_metric.
  config.test_on_best = False
  # Data parallelism: "mesh" (jit over a Mesh with NamedSharding) or "pmap" (jax.pmap + lax.pmean).
  config.parallel = "mesh"
  # Resume even if the workdir holds a run of a different config.
  config.overwrite = False
  # Consecutive non-finite steps tolerated (each is skipped) before training stops with an error.
  config.max_nonfinite_steps = 10
  # Gradient accumulation: each step averages g_e, g_t and ∇φ over k micro-batches of
  # batch_size / k, then updates once (the same update, 1/k of the activation memory).
  config.accumulate_steps = 1
  # Multi-host runs without JAX's preemption service agree on a SIGTERM stop (one blocking
  # all-gather) every this many steps and at log and checkpoint steps; with it (jax.distributed's
  # default) and in a single-process run the stop is checked every step, for free.
  config.preemption_check_every = 10
  # Test examples drawn in samples.png.
  config.num_samples = 6
  # λ: weight of the task loss in the enhancer's update (all methods but enhance_only).
  config.task_weight = 1.0
  # joint / enhance_only normally pull back one summed cotangent (cheapest, no cosine to log); True
  # pulls g_e and g_t back apart, same update, so their cosine and gate statistics are logged too.
  config.measure_baseline_cosine = False

  config.data = default_data_config()
  config.data.patch_size = (96, 128)

  config.task = ml_collections.ConfigDict()
  # Low quality simulated on device from the high-quality batch; see gradprom_jax.core.degradations.
  config.task.degradation = "downsample(scale=4) > gaussian_noise(sigma=0.05)"
  # segmentation | classification. A multi-task config (model.recognizers, e.g.
  # configs/ph2.py:multitask) names several, comma-separated ("segmentation,classification"), each
  # with its recogniser in model.recognizers.<task> and its options in task.<task>; its per-task
  # metrics are suffixed with the task's name (dice/segmentation). See gradprom_jax.core.task_config.
  config.task.recognition = "segmentation"
  # Enhancement loss: l1 | mse | charbonnier, plus ssim_weight · (1 − SSIM).
  config.task.enhancement_loss = "l1"
  config.task.ssim_weight = 0.0
  # Each task kind's loss options (task.dice_weight, task.label_smoothing, ...): declared, with
  # their --help lines, by the kind (gradprom_jax.tasks, TaskKind.loss_options).
  for kind in TASK_KINDS.values():
    for option in kind.loss_options:
      if option.name in config.task:
        raise ValueError(f"Task kind {kind.name!r}'s loss option would replace "
                         f"task.{option.name}.")
      config.task[option.name] = option.default
  # Per-class loss weights: None (unweighted); "balanced" (classification: inverse class frequencies
  # of the training split, normalised to mean 1, for imbalanced classes, where an unweighted
  # recogniser can end up predicting the majority class for every image); or a tuple, one per class.
  config.task.class_weights = ml_collections.config_dict.placeholder(object)

  # Each combination method's own options, in the group named after it (config.gradprom, ...):
  # declared, with their comments, in the method's module of gradprom_jax.methods.
  for method in methods.combination_methods():
    if method.options is not None:
      if method.name in config:
        raise ValueError(f"Method {method.name!r}'s config group would replace config.{method.name}.")
      config[method.name] = method.default_options()

  config.model = ml_collections.ConfigDict()
  # Everything but `name` is passed to the model's constructor.
  config.model.enhancer = ml_collections.ConfigDict(
      {"name": "edsr", "features": 32, "num_blocks": 4})
  config.model.recognizer = ml_collections.ConfigDict(
      {"name": "unet_segmenter", "features": 16, "num_levels": 3})
  # Compute dtype of both models: float32 | bfloat16 (mixed precision: parameters, optimiser
  # states, losses, metrics and GradProm's cosine stay float32).
  config.model.dtype = "float32"
  # Recompute each model block's activations in the backward pass: less memory, ~1 more forward.
  config.model.remat = False

  config.optim = ml_collections.ConfigDict()
  config.optim.enhancer_lr = 1e-3
  config.optim.recognizer_lr = 1e-3
  config.optim.warmup_steps = 50
  config.optim.weight_decay = 1e-4
  # What AdamW's weight decay applies to: "all" (every parameter, as optax.adamw without a mask;
  # every committed result used it) or "kernels" (conv and dense kernels only; biases and norm
  # scales are not decayed: the usual choice for a new study).
  config.optim.weight_decay_mask = "all"
  # Decay of a moving average of the enhancer's parameters, used by every evaluation (validation,
  # test, samples) when set, e.g. 0.999; it starts at the initial parameters. None or 0: off.
  config.optim.ema_decay = ml_collections.config_dict.placeholder(float)
  # Global-norm clipping after the combiner (None: no clipping).
  config.optim.clip_norm = 1.0

  # The recogniser: what it trains on, freezing, a pre-trained one to start from.
  config.recognizer = ml_collections.ConfigDict()
  config.recognizer.train_on = "enhanced"   # enhanced | high_quality | both
  config.recognizer.frozen = False          # never update the recogniser (needs init_from)
  # Another run's workdir: at a fresh start (not on resume) the recogniser's params come from its
  # newest checkpoint. "{seed}" is replaced by config.seed (one sweep, one source per seed).
  config.recognizer.init_from = ml_collections.config_dict.placeholder(str)

  # The enhancer's warm start, as recognizer.init_from.
  config.enhancer = ml_collections.ConfigDict()
  config.enhancer.init_from = ml_collections.config_dict.placeholder(str)

  # A fixed yardstick: the workdir ("{seed}" allowed) of a recognizer_only run whose recogniser
  # also scores every evaluation: judge_<metric> on the enhanced images, judge_no_enhancement_* on
  # the interpolated input, judge_high_quality_* on the high-quality images.
  config.judge = ml_collections.ConfigDict()
  config.judge.workdir = ml_collections.config_dict.placeholder(str)

  # Multi-host: see gradprom_jax.training.distributed.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.mode = "auto"   # auto | off | explicit
  config.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)
  config.distributed.num_processes = ml_collections.config_dict.placeholder(int)
  config.distributed.process_id = ml_collections.config_dict.placeholder(int)
  return config


def shrink_for_smoke_test(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks ``config`` in place to a seconds-long run: tiny models, a few steps, small images.

  The dataset's own smoke-test values (`DatasetSpec.smoke_test_keys`) if it declares some, else
  the images are resized to 64 pixels on their longer side at build time.
  """
  config.num_train_steps = 6
  config.batch_size = 4
  config.log_every = 2
  config.eval_every = 3
  config.checkpoint_every = 3
  config.num_samples = 2
  config.optim.warmup_steps = 1
  scale = parse_degradation(config.task.degradation).scale
  dataset = DATASETS.get(config.data.name)
  if dataset is not None and dataset.smoke_test_keys:
    config.data.update(dataset.smoke_test_keys)
  elif config.data.image_size is not None:
    height, width = config.data.image_size
    factor = 64 / max(height, width)
    multiple = 8 * scale
    config.data.image_size = tuple(max(multiple, round(s * factor / multiple) * multiple)
                                   for s in (height, width))
  config.data.patch_size = None
  recognizers = (tuple(config.model.recognizers.values()) if "recognizers" in config.model
                 else (config.model.recognizer,))
  for model in (config.model.enhancer, *recognizers):
    if "features" in model:
      model.features = 8
  if "num_blocks" in config.model.enhancer:
    config.model.enhancer.num_blocks = 1
  if "num_levels" in config.model.enhancer:
    config.model.enhancer.num_levels = 2
  for recognizer in recognizers:
    if "num_levels" in recognizer:
      recognizer.num_levels = 2
    if "stage_sizes" in recognizer:
      recognizer.stage_sizes = (1, 1)
  return config


def parse_config_args(arg: str | None, valid: tuple[str, ...]) -> set[str]:
  """The comma-separated options after ``file.py:`` (e.g. ``configs/ph2.py:classification,smoke``).

  >>> sorted(parse_config_args("smoke,classification", ("smoke", "classification")))
  ['classification', 'smoke']
  """
  options = {a.strip() for a in (arg or "").split(",") if a.strip()}
  unknown = options - set(valid)
  if unknown:
    raise ValueError(f"Unknown config option(s) {sorted(unknown)}; valid: {', '.join(valid)}.")
  return options


def classification_recognizer() -> ml_collections.ConfigDict:
  """A small ResNet classifier, the default recogniser of classification configs."""
  return ml_collections.ConfigDict({"name": "resnet", "features": 16, "stage_sizes": (1, 1, 1, 1)})


def denoising_enhancer() -> ml_collections.ConfigDict:
  """A residual U-Net, the default enhancer of same-size (denoising) configs."""
  return ml_collections.ConfigDict({"name": "unet", "features": 16, "num_levels": 3})


def task_options(recognition: str) -> ml_collections.ConfigDict:
  """The options of one task of a multi-task config, ``task.<task>``; None takes the shared key's.

  >>> sorted(task_options("classification"))
  ['class_weights', 'gradprom', 'label_smoothing', 'weight']
  """
  gate_defaults = methods.lookup("gradprom").default_options()   # the types of its options
  config = ml_collections.ConfigDict()
  # λ_k = task_weight × weight: this task's share of the enhancer's update (a sweep over
  # task_weight keeps the tasks' ratio).
  config.weight = 1.0
  # This task's per-class loss weights, as task.class_weights (None: task.class_weights).
  config.class_weights = ml_collections.config_dict.placeholder(object)
  # The task kind's loss options (TaskKind.loss_options), this task's own (None: task.<option>).
  for option in task_kind(recognition).loss_options:
    config[option.name] = ml_collections.config_dict.placeholder(type(option.default))
  # GradProm's gate for this task alone (None: the gradprom.* value): threshold τ_k, mode,
  # granularity, task_scale. Each task is gated against g_e on its own.
  config.gradprom = ml_collections.ConfigDict({
      option: ml_collections.config_dict.placeholder(type(gate_defaults[option]))
      for option in GATE_OPTIONS})
  return config


def multitask_config(config: ml_collections.ConfigDict,
                     recognizers: dict[str, ml_collections.ConfigDict]) -> ml_collections.ConfigDict:
  """Turns ``config`` into a multi-task config with one recogniser per task (named by its kind).

  ``task.recognition`` names the tasks (comma-separated), each task gets its recogniser in
  ``model.recognizers.<task>`` and its options in ``task.<task>`` (:func:`task_options`);
  ``model.recognizer`` is removed. See :mod:`gradprom_jax.core.task_config` for how they are read.

  >>> config = multitask_config(base_config(), {"segmentation": base_config().model.recognizer,
  ...                                          "classification": classification_recognizer()})
  >>> config.task.recognition, sorted(config.model.recognizers), "recognizer" in config.model
  ('segmentation,classification', ['classification', 'segmentation'], False)
  """
  config.task.recognition = ",".join(recognizers)
  # One recogniser per task (each as model.recognizer: `name` and its constructor's options).
  config.model.recognizers = ml_collections.ConfigDict(
      {name: ml_collections.ConfigDict(model) for name, model in recognizers.items()})
  del config.model["recognizer"]
  for name in recognizers:
    config.task[name] = task_options(name)
  return config
