r"""Warm train-step times of joint training and GradProm with K = 1, 2, 3 recognition tasks.

    .venv/bin/python benchmarks/multitask_step_time.py                      # K = 1, 2, 3
    .venv/bin/python benchmarks/multitask_step_time.py --smoke --steps 3    # seconds; used by a test

GradProm with K tasks pulls K + 1 cotangents back through one enhancer forward pass (g_e and one
g_t,k per task); joint training pulls back one summed cotangent. So the least an exact GradProm
step can cost is ``bound_K = joint_K + K × backward``, where ``backward`` is one more enhancer
pull-back ((forward + 1 pull-back) − forward, timed on the step's degraded batch), and
``gradprom_over_bound`` per K says how close the library's step comes to it (target ≤ 1.10).

The tasks, all on one enhancer in the multi-task form: lesion segmentation (the config's U-Net
segmenter), the 3-class diagnosis (a ResNet classifier) and, for K = 3, a second segmentation head
(another U-Net segmenter on the same masks: a stand-in third task of the same cost as the first).
Every program runs once per round, in a rotated order, so load from other processes hits all alike;
medians over ``--steps`` rounds after ``--warmup``. The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import (REPO, _rounded, load_config, machine_description,  # noqa: E402
                       time_interleaved)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "default.py"),
                      help="Single-task config file (its enhancer, segmenter and data).")
  parser.add_argument("--smoke", action="store_true", help="Add the config's `smoke` option.")
  parser.add_argument("--tasks", default="1,2,3", help="Comma-separated task counts K (1 to 3).")
  parser.add_argument("--patch_size", default="48,64",
                      help="Training crop h,w (smaller than the config's, for minutes not hours).")
  parser.add_argument("--batch_size", type=int, default=None, help="Default: the config's.")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temporary dir).")
  parser.add_argument("--steps", type=int, default=20, help="Timed rounds.")
  parser.add_argument("--warmup", type=int, default=2, help="Untimed rounds after compilation.")
  return parser.parse_args(argv)


def task_configs(config, counts):
  """{K: (the multi-task config, its first K parsed tasks)}; K = 3 adds a second segmentation."""
  from gradprom_jax.configuration.config import classification_recognizer, multitask_config
  from gradprom_jax.configuration.task_parsing import parse_task_config

  multi = multitask_config(copy.deepcopy(config), {
      "segmentation": config.model.recognizer, "classification": classification_recognizer()})
  parsed = parse_task_config(multi)
  tasks = list(parsed.tasks)
  tasks.append(dataclasses.replace(tasks[0], name="segmentation_b",
                                   config_prefix="task.segmentation_b.",
                                   model_key="model.recognizers.segmentation_b"))
  return {k: (multi, dataclasses.replace(parsed, tasks=tuple(tasks[:k]))) for k in counts}


def benchmark(args: argparse.Namespace) -> dict:
  import jax
  import jax.numpy as jnp

  from gradprom_jax import data as data_lib
  from gradprom_jax.configuration.run_spec import system_from_config
  from gradprom_jax.training.train import initial_state
  from gradprom_jax.training.train_step import make_train_step
  from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                   recognizer_tx_from_config)

  print(f"jax {jax.__version__}, devices: {jax.devices()}", flush=True)
  config = load_config(args.config, args.smoke)
  if not args.smoke:
    config.data.patch_size = tuple(int(s) for s in args.patch_size.split(","))
  if args.batch_size:
    config.batch_size = args.batch_size
  counts = [int(k) for k in args.tasks.split(",")]
  with contextlib.ExitStack() as stack:
    config.data.data_dir = args.data_dir or stack.enter_context(tempfile.TemporaryDirectory())
    dataset = data_lib.load_dataset(config.data)
    iterator = iter(data_lib.make_train_loader(dataset, global_batch_size=config.batch_size,
                                               seed=0, patch_size=config.data.patch_size))
    batches = [jax.device_put(next(iterator)) for _ in range(4)]
  num_classes = {"segmentation": 2, "segmentation_b": 2, "classification": dataset.num_classes}

  programs, states, compile_s, system = {}, {}, {}, None
  for k, (multi, tasks) in task_configs(config, counts).items():
    system = system_from_config(multi, channels=dataset.image_shape[-1], tasks=tasks,
                           num_classes={name: num_classes[name] for name in tasks.names})
    for method in ("joint", "gradprom"):
      multi.method = method
      phases = phases_from_config(multi)
      enhancer_tx = enhancer_tx_from_config(multi, phases, tasks)
      recognizer_tx = recognizer_tx_from_config(multi, phases, tasks)
      name = f"{method}_k{k}"
      states[name] = initial_state(multi.seed, system, dataset.image_shape, enhancer_tx,
                                   recognizer_tx)
      step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                     recognizer_tx=recognizer_tx, task_weight=tasks.task_weight),
                     donate_argnums=0)
      start = time.perf_counter()
      programs[name] = step.lower(states[name], batches[0]).compile()
      compile_s[name] = time.perf_counter() - start
      print(f"compiled {name} in {compile_s[name]:.1f} s", flush=True)

  # One more enhancer pull-back: (forward + 1 pull-back) − forward, on the step's degraded batch.
  enhancer_params = states[f"joint_k{counts[0]}"].enhancer_params
  image = batches[0]["image"]
  low_quality = system.degrade(jax.random.key(0), image, jnp.arange(image.shape[0]))
  enhanced = jax.eval_shape(lambda p, x: system.enhance(p, x, train=True), enhancer_params,
                            low_quality)
  cotangent = jax.random.normal(jax.random.key(1), enhanced.shape)

  def forward(params, x, c):
    return jnp.sum(system.enhance(params, x, train=True) * c)

  def forward_1_pullback(params, x, c):
    _, pullback = jax.vjp(lambda p: system.enhance(p, x, train=True), params)
    return pullback(c)[0]

  # A copy: the steps donate their states' buffers.
  enhancer_inputs = (jax.tree.map(jnp.copy, enhancer_params), low_quality, cotangent)
  for name, fn in (("forward", forward), ("forward_1_pullback", forward_1_pullback)):
    programs[name] = jax.jit(fn).lower(*enhancer_inputs).compile()
    compile_s[name] = 0.0

  times = time_interleaved(programs, states, batches, enhancer_inputs, warmup=args.warmup,
                           steps=args.steps)

  median = {name: statistics.median(t) for name, t in times.items()}
  backward_s = median["forward_1_pullback"] - median["forward"]
  per_k = {}
  for k in counts:
    joint, gradprom = f"joint_k{k}", f"gradprom_k{k}"
    bound_s = median[joint] + k * backward_s
    ratios = [g / (j + k * backward_s) for g, j in zip(times[gradprom], times[joint])]
    per_k[str(k)] = {
        "joint_ms": 1e3 * median[joint], "gradprom_ms": 1e3 * median[gradprom],
        "bound_ms": 1e3 * bound_s, "gradprom_over_bound": median[gradprom] / bound_s,
        "gradprom_over_joint": median[gradprom] / median[joint],
        # Per round: both steps of the round over that round's joint + the median backward.
        "gradprom_over_bound_round_quartiles": (statistics.quantiles(ratios, n=4)
                                                if len(ratios) > 1 else ratios * 3),
    }
  return _rounded({
      "platform": jax.devices()[0].platform, "config": args.config + (" smoke" if args.smoke else ""),
      "batch_size": config.batch_size, "patch_size": config.data.patch_size,
      "degradation": config.task.degradation, "rounds": args.steps, **machine_description(),
      "enhancer_ms": {name: 1e3 * median[name] for name in ("forward", "forward_1_pullback")},
      "backward_ms": 1e3 * backward_s, "compile_s": compile_s, "tasks": per_k,
      "gradprom_over_bound": {k: v["gradprom_over_bound"] for k, v in per_k.items()},
  })


def main(argv=None) -> None:
  result = benchmark(parse_args(argv))
  print(f"{result['platform']}, batch {result['batch_size']}, patch {result['patch_size']}, "
        f"median of {result['rounds']} interleaved rounds; one enhancer backward pass "
        f"{result['backward_ms']:.1f} ms:")
  for k, row in result["tasks"].items():
    print(f"  K={k}: joint {row['joint_ms']:8.1f} ms  gradprom {row['gradprom_ms']:8.1f} ms  "
          f"bound {row['bound_ms']:8.1f} ms  gradprom/bound {row['gradprom_over_bound']:.3f}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
