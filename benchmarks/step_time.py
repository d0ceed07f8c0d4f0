r"""Warm train-step times of enhance_only, joint, GradProm (shared forward) and a naive GradProm.

    .venv/bin/python benchmarks/step_time.py                        # default config, this process
    .venv/bin/python benchmarks/step_time.py --devices 1,2,4        # simulated CPU devices
    .venv/bin/python benchmarks/step_time.py --devices 4 --parallel pmap
    .venv/bin/python benchmarks/step_time.py --smoke --steps 3      # seconds; used by the test

What is timed, interleaved in one process (each round runs every method once, in a rotated order, so
load from other processes on a shared machine hits all methods alike), median over ``--steps``
rounds after ``--warmup``:

* the compiled train steps of ``enhance_only``, ``joint`` (one pull-back of the summed cotangent),
  ``gradprom`` (one enhancer forward, g_e and g_t from two pull-backs of its ``jax.vjp`` closure)
  and ``gradprom_naive`` (the same step with g_e and g_t from two ``jax.grad`` calls, each with its
  own enhancer forward and backward: what one writes without :func:`shared_forward_gradients`);
  optionally (``--methods``) ``gradprom_naive_merged`` (the naive code without the barrier that
  stops XLA from merging the two forwards) and ``gradprom_vmapped`` (one vmapped 2-cotangent
  pull-back, the library's earlier formulation);
* enhancer-only programs on the step's degraded batch: the forward pass, forward + 1 pull-back,
  forward + 2 pull-backs vmapped, forward + 2 sequential pull-backs (the library's way) of one
  ``jax.vjp`` closure. ``backward_s`` = (forward + 1 pull-back) - forward: the cost of one more
  enhancer backward pass, and ``bound_s`` = joint + backward_s is the least an exact GradProm step
  can cost (it needs exactly one more pull-back through the enhancer than joint training).

With ``--devices`` every count runs in its own subprocess (``XLA_FLAGS`` must be set before JAX starts).
On CPU that measures the overhead of data parallelism, not a speed-up: all simulated devices share the
same cores. On a GPU/TPU host run it without ``--devices``; it uses every visible accelerator.

The last line printed is one JSON object (for ``--devices``: ``{"runs": [...]}`` plus the 1-device
keys when 1 is among the counts).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
METHODS = ("enhance_only", "joint", "gradprom", "gradprom_naive", "gradprom_naive_merged",
           "gradprom_vmapped")
REQUIRED_METHODS = ("joint", "gradprom", "gradprom_naive")
ENHANCER_PROGRAMS = ("forward", "forward_1_pullback", "forward_2_pullbacks_vmapped",
                     "forward_2_pullbacks_sequential")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "default.py"),
                      help="Config file, optionally `file.py:options`.")
  parser.add_argument("--smoke", action="store_true", help="Add the config's `smoke` option.")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data dir (default: a temporary dir; the default dataset builds in ~15 s).")
  parser.add_argument("--steps", type=int, default=40, help="Timed rounds (one step of each method).")
  parser.add_argument("--warmup", type=int, default=3, help="Untimed rounds after compilation.")
  parser.add_argument("--parallel", choices=("mesh", "pmap"), default="mesh")
  parser.add_argument("--devices", default=None,
                      help="Comma-separated simulated CPU device counts, each run in a subprocess.")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"Comma-separated steps to time; {', '.join(REQUIRED_METHODS)} are always in.")
  parser.add_argument("--pipeline_batches", type=int, default=40,
                      help="Batches drawn to time the input pipeline (0: skip).")
  return parser.parse_args(argv)


def machine_description() -> dict:
  cpu = platform.processor() or ""
  with contextlib.suppress(OSError):
    match = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    cpu = match.group(1) if match else cpu
  return {"cpu": cpu, "nproc": os.cpu_count()}


def run_device_counts(args: argparse.Namespace) -> None:
  """Runs this script once per simulated device count, each in a fresh process."""
  runs = []
  for count in [int(c) for c in args.devices.split(",")]:
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}".strip()}
    command = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--parallel", args.parallel, "--methods", args.methods,
               "--pipeline_batches", str(args.pipeline_batches if count == 1 else 0)]
    command += ["--smoke"] if args.smoke else []
    command += ["--data_dir", args.data_dir] if args.data_dir else []
    print(f"--- {count} simulated CPU device(s): {' '.join(command[1:])}", flush=True)
    out = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="", flush=True)
    runs.append(json.loads(out.strip().splitlines()[-1]))
  single = next((r for r in runs if r["num_devices"] == 1), {})
  print(json.dumps({**single, "runs": runs}))


def load_config(spec: str, smoke: bool):
  path, _, options = spec.partition(":")
  options = ",".join(o for o in (options, "smoke" if smoke else "") if o)
  module_spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(options or None)


def naive_separate_gradients(system, enhancer_params, recognizer_params, low_quality, batch,
                             normalizers=None, *, keep_forwards_apart: bool = True):
  """:func:`shared_forward_gradients` the naive way: one ``jax.grad`` per loss, each with its own
  enhancer forward and backward pass. Same signature and result (by task name; one
  task); for comparison only.

  Written plainly inside one jit (``keep_forwards_apart=False``), XLA's common-subexpression
  elimination merges the two identical enhancer forwards: the program then equals two sequential
  pull-backs of one forward. ``keep_forwards_apart`` feeds the second forward ``x + 0.0 * x``, which
  XLA may not fold for floats (NaN * 0 is NaN), so the forwards stay apart as they are when the losses
  are differentiated in separate programs or differ (dropout). (``optimization_barrier`` did not
  stop the merge on XLA:CPU.)
  """
  import jax

  def enhancement_loss(theta):
    enhanced = system.enhance(theta, low_quality, train=True)
    return system.enhancement_loss(enhanced, batch["image"]), enhanced

  (head,) = system.heads
  normalizer = None if normalizers is None else normalizers[head.name]

  def task_loss(theta, phi):
    images = low_quality + 0.0 * low_quality if keep_forwards_apart else low_quality
    enhanced = system.enhance(theta, images, train=True)
    return head.loss(head.recognize(phi, enhanced, train=True), batch, normalizer)

  (loss_e, enhanced), g_e = jax.value_and_grad(enhancement_loss, has_aux=True)(enhancer_params)
  loss_t, (g_t, g_phi) = jax.value_and_grad(task_loss, argnums=(0, 1))(
      enhancer_params, recognizer_params[head.name])
  return {"enhancement_loss": loss_e, "task_loss": {head.name: loss_t}, "enhanced": enhanced,
          "enhancement_grads": g_e, "task_grads": {head.name: g_t},
          "recognizer_grads": {head.name: g_phi}}


def vmapped_pullback_gradients(system, enhancer_params, recognizer_params, low_quality, batch,
                               normalizers=None):
  """:func:`shared_forward_gradients` with one vmapped pull-back of the two stacked cotangents
  instead of two sequential pull-backs (the library's earlier formulation). For comparison only."""
  import jax
  import jax.numpy as jnp

  (head,) = system.heads
  normalizer = None if normalizers is None else normalizers[head.name]
  enhanced, pullback = jax.vjp(lambda p: system.enhance(p, low_quality, train=True), enhancer_params)
  loss_e, d_e = jax.value_and_grad(system.enhancement_loss)(enhanced, batch["image"])
  loss_t, (g_phi, d_t) = jax.value_and_grad(
      lambda phi, y: head.loss(head.recognize(phi, y, train=True), batch, normalizer),
      argnums=(0, 1))(recognizer_params[head.name], enhanced)
  both = jax.vmap(lambda cotangent: pullback(cotangent)[0])(jnp.stack([d_e, d_t]))
  return {"enhancement_loss": loss_e, "task_loss": {head.name: loss_t}, "enhanced": enhanced,
          "enhancement_grads": jax.tree.map(lambda g: g[0], both),
          "task_grads": {head.name: jax.tree.map(lambda g: g[1], both)},
          "recognizer_grads": {head.name: g_phi}}


# Variants of the GradProm step: the library's step with shared_forward_gradients swapped while tracing.
GRADIENT_VARIANTS = {"gradprom_naive": naive_separate_gradients,
                     "gradprom_naive_merged": functools.partial(naive_separate_gradients,
                                                                keep_forwards_apart=False),
                     "gradprom_vmapped": vmapped_pullback_gradients}


def count_convolutions(compiled) -> int:
  """Convolution ops in the optimised program: shows whether XLA merged repeated forwards."""
  try:
    return len(re.findall(r"\bconvolution\(", compiled.as_text()))
  except Exception:  # Not every backend exposes optimised HLO text.
    return -1


def benchmark(args: argparse.Namespace) -> dict:
  import jax
  import jax.numpy as jnp

  from gradprom_jax import data as data_lib
  from gradprom_jax.core.image_dtype import to_unit_float
  from gradprom_jax.training import parallel as parallel_lib, train_step as train_step_lib
  from gradprom_jax.training.train import build_system
  from gradprom_jax.training.train_state import initial_state
  from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                   recognizer_tx_from_config)

  print(f"jax {jax.__version__}, devices: {jax.devices()}", flush=True)
  config = load_config(args.config, args.smoke)
  config.parallel = args.parallel
  with contextlib.ExitStack() as stack:
    config.data.data_dir = args.data_dir or stack.enter_context(tempfile.TemporaryDirectory())
    start = time.perf_counter()
    dataset = data_lib.load_dataset(config.data)
    print(f"dataset {config.data.name} {dataset.image_shape} ready in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    train_loader = data_lib.make_train_loader(dataset, global_batch_size=config.batch_size,
                                              seed=config.seed, patch_size=config.data.patch_size)
    pipeline = {}
    if args.pipeline_batches:
      iterator = iter(train_loader)
      next(iterator)  # Warm-up: opens the record files.
      start = time.perf_counter()
      host_batches = [next(iterator) for _ in range(args.pipeline_batches)]
      pipeline["pipeline_images_per_s"] = (
          config.batch_size * args.pipeline_batches / (time.perf_counter() - start))
    else:
      iterator = iter(train_loader)
      host_batches = [next(iterator) for _ in range(4)]

  parallel = parallel_lib.DataParallel(config.parallel)
  parallel.check_batch_size(config.batch_size)
  system = build_system(config, dataset)
  batches = [parallel.put_batch(b) for b in host_batches[:4]]
  if parallel.mode == "pmap":  # Place the per-device slices once, outside the timed calls.
    to_devices = jax.pmap(lambda x: x)
    batches = [jax.tree.map(to_devices, b) for b in batches]

  # One compiled step per method, each with its own state (the optimiser trees differ).
  programs, states, compile_s, convolutions = {}, {}, {}, {}
  methods = [m for m in METHODS if m in REQUIRED_METHODS or m in args.methods.split(",")]
  for method in methods:
    config.method = "gradprom" if method in GRADIENT_VARIANTS else method
    phases = phases_from_config(config)
    enhancer_tx = enhancer_tx_from_config(config, phases)
    recognizer_tx = recognizer_tx_from_config(config, phases)
    state = initial_state(config.seed, system, dataset.image_shape, enhancer_tx, recognizer_tx)
    step = parallel.compile_step(train_step_lib.make_train_step(
        system, phases[-1], enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
        task_weight=dict.fromkeys(system.task_names, config.task_weight),
        axis_name=parallel.axis_name))
    states[method] = parallel.put_state(state)
    swap = (mock.patch.object(train_step_lib, "shared_forward_gradients", GRADIENT_VARIANTS[method])
            if method in GRADIENT_VARIANTS else contextlib.nullcontext())
    start = time.perf_counter()
    with swap:
      compiled = step.lower(states[method], batches[0]).compile()
    compile_s[method] = time.perf_counter() - start
    programs[method] = compiled
    convolutions[method] = count_convolutions(compiled)
    print(f"compiled {method} in {compile_s[method]:.1f} s", flush=True)

  # Enhancer-only programs on a degraded batch of the step's shape, with the step's sharding.
  enhancer_params = jax.device_get(
      parallel.global_state(states["joint"]).enhancer_params if parallel.mode == "pmap"
      else states["joint"].enhancer_params)
  host_image = jnp.asarray(to_unit_float(host_batches[0]["image"]))   # the loader's are uint8
  low_quality = system.degrade(jax.random.key(0), host_image, jnp.arange(host_image.shape[0]))
  enhanced_shape = jax.eval_shape(lambda p, x: system.enhance(p, x, train=True),
                                  enhancer_params, low_quality)
  cotangents = [jax.random.normal(jax.random.key(i), enhanced_shape.shape) for i in (1, 2)]

  def forward(params, x, c1, c2):
    return jnp.sum(system.enhance(params, x, train=True) * c1)

  def forward_1_pullback(params, x, c1, c2):
    _, pullback = jax.vjp(lambda p: system.enhance(p, x, train=True), params)
    return pullback(c1)[0]

  def forward_2_pullbacks_vmapped(params, x, c1, c2):
    _, pullback = jax.vjp(lambda p: system.enhance(p, x, train=True), params)
    return jax.vmap(lambda c: pullback(c)[0])(jnp.stack([c1, c2]))

  def forward_2_pullbacks_sequential(params, x, c1, c2):
    _, pullback = jax.vjp(lambda p: system.enhance(p, x, train=True), params)
    return pullback(c1)[0], pullback(c2)[0]

  if parallel.mode == "pmap":
    devices = jax.local_device_count()
    split = lambda a: jax.pmap(lambda y: y)(jnp.reshape(a, (devices, -1, *a.shape[1:])))
    enhancer_inputs = (jax.pmap(lambda y: y)(jax.tree.map(
        lambda a: jnp.broadcast_to(a, (devices, *a.shape)), enhancer_params)),
        split(low_quality), split(cotangents[0]), split(cotangents[1]))
    compile_program = lambda f: jax.pmap(f, axis_name=parallel_lib.PMAP_AXIS)
  else:
    data = parallel.data_sharding
    enhancer_inputs = (jax.device_put(enhancer_params, parallel.replicated),
                       *(jax.device_put(a, data) for a in (low_quality, *cotangents)))
    compile_program = lambda f: jax.jit(
        f, in_shardings=(parallel.replicated, data, data, data))
  local = {"forward": forward, "forward_1_pullback": forward_1_pullback,
           "forward_2_pullbacks_vmapped": forward_2_pullbacks_vmapped,
           "forward_2_pullbacks_sequential": forward_2_pullbacks_sequential}
  for name, function in local.items():
    start = time.perf_counter()
    programs[name] = compile_program(function).lower(*enhancer_inputs).compile()
    compile_s[name] = time.perf_counter() - start
    convolutions[name] = count_convolutions(programs[name])

  times = time_interleaved(programs, states, batches, enhancer_inputs, warmup=args.warmup,
                           steps=args.steps)
  median = {name: statistics.median(t) for name, t in times.items()}

  def paired(numerator: str, denominator: str) -> list[float]:
    """Quartiles of the per-round ratio: both ran in the same round, under the same load."""
    ratios = [a / b for a, b in zip(times[numerator], times[denominator])]
    return statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3

  backward_s = median["forward_1_pullback"] - median["forward"]
  second_pullback_s = median["forward_2_pullbacks_vmapped"] - median["forward_1_pullback"]
  bound_s = median["joint"] + backward_s
  consumption = config.batch_size / median["gradprom"]
  result = {
      "num_devices": jax.device_count(), "platform": jax.devices()[0].platform,
      "parallel": parallel.mode, "config": args.config + (" smoke" if args.smoke else ""),
      "degradation": config.task.degradation, "batch_size": config.batch_size, "patch_size": config.data.patch_size,
      "rounds": args.steps, **machine_description(),
      "step_ms": {m: 1e3 * median[m] for m in methods},
      "enhancer_ms": {p: 1e3 * median[p] for p in ENHANCER_PROGRAMS},
      "backward_ms": 1e3 * backward_s,
      "second_pullback_ms": 1e3 * second_pullback_s,
      "bound_ms": 1e3 * bound_s,
      "compile_s": compile_s,
      "convolutions": convolutions,
      "gradprom_over_joint": median["gradprom"] / median["joint"],
      "gradprom_over_bound": median["gradprom"] / bound_s,
      "naive_over_shared": median["gradprom_naive"] / median["gradprom"],
      "vmapped_over_sequential_pullbacks": (median["forward_2_pullbacks_vmapped"]
                                            / median["forward_2_pullbacks_sequential"]),
      "step_images_per_s": consumption,
  }
  ratios = {"gradprom_over_joint": ("gradprom", "joint"),
            "naive_over_shared": ("gradprom_naive", "gradprom"),
            "naive_merged_over_shared": ("gradprom_naive_merged", "gradprom"),
            "vmapped_over_shared": ("gradprom_vmapped", "gradprom"),
            "joint_over_enhance_only": ("joint", "enhance_only"),
            "vmapped_over_sequential_pullbacks": ("forward_2_pullbacks_vmapped",
                                                  "forward_2_pullbacks_sequential")}
  ratios = {k: v for k, v in ratios.items() if set(v) <= set(times)}
  result.update({k: median[a] / median[b] for k, (a, b) in ratios.items()})
  result["paired_ratio_quartiles"] = {k: paired(a, b) for k, (a, b) in ratios.items()}
  if pipeline:
    result.update(pipeline, pipeline_over_step=pipeline["pipeline_images_per_s"] / consumption)
  return _rounded(result)


def time_interleaved(programs: dict, states: dict, batches: list, enhancer_inputs: tuple, *,
                     warmup: int, steps: int) -> dict[str, list[float]]:
  """Seconds per call of each compiled program over ``steps`` rounds (after ``warmup``).

  Rounds are interleaved and their order rotates, so that no program always runs first or last
  and all of them see the same machine load. A program named in ``states`` is a train step
  (``state, batch -> state, metrics``; its state is carried over), any other is called on
  ``enhancer_inputs``.
  """
  import jax   # imported late, after --devices has set XLA_FLAGS (as in benchmark())
  names = list(programs)
  times = {name: [] for name in names}
  for round_index in range(warmup + steps):
    shift = round_index % len(names)
    for name in names[shift:] + names[:shift]:
      start = time.perf_counter()
      if name in states:
        states[name], metrics = programs[name](states[name], batches[round_index % len(batches)])
        jax.block_until_ready((states[name], metrics))
      else:
        jax.block_until_ready(programs[name](*enhancer_inputs))
      if round_index >= warmup:
        times[name].append(time.perf_counter() - start)
  return times


def _rounded(tree):
  if isinstance(tree, dict):
    return {k: _rounded(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_rounded(v) for v in tree]
  return round(tree, 4) if isinstance(tree, float) else tree


def print_summary(result: dict) -> None:
  print(f"{result['num_devices']} {result['platform']} device(s), {result['parallel']}, batch "
        f"{result['batch_size']}, median of {result['rounds']} interleaved rounds:")
  for name, ms in {**result["step_ms"], **result["enhancer_ms"]}.items():
    print(f"  {name:32s} {ms:9.2f} ms   compile {result['compile_s'][name]:6.2f} s   "
          f"convolutions {result['convolutions'][name]}")
  print(f"  one enhancer backward pass {result['backward_ms']:.2f} ms; bound = joint + backward = "
        f"{result['bound_ms']:.2f} ms")


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.devices:
    run_device_counts(args)
    return
  result = benchmark(args)
  print_summary(result)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
