"""The gate's cosine on real gradients at each float32 matmul precision, against float64.

XLA computes float32 dots below float32 by default on GPUs (TF32 tensor cores) and TPUs (bfloat16
passes); every dot of the combiners' geometry asks for ``Precision.HIGHEST``. This script measures
what that buys on the machine it runs on. Along a short GradProm training trajectory of the default
config (synthetic lesions, degraded as in training, enhancer and recogniser at their default sizes
unless ``--tiny``), at every step it takes the step's real g_e and g_t (from one shared forward pass,
as the train step computes them, at the backend's default precision) and computes cos(g_e, g_t)
three ways:

* as the combiner does (``gradprom_jax.cosine_similarity``: float32, ``Precision.HIGHEST``);
* the same sums with ``jnp.vdot`` at ``Precision.DEFAULT`` (what a dot without the precision
  argument gets);
* in float64 on the host (NumPy), the reference.

It reports the largest |error| of each against float64 and how many of the gate's decisions
(cos > 0) each gets wrong. On CPU both errors are float32 rounding and no decision flips; the figures
that matter come from a GPU or TPU. Ends with one JSON line.

    .venv/bin/python benchmarks/gate_precision.py [--steps 40] [--batch 8] [--size H W] [--tiny]
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from gradprom_jax import cosine_similarity
from gradprom_jax.configuration.config import base_config, shrink_for_smoke_test
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.data.synthetic_lesions import generate_split
from gradprom_jax.training.train_state import create_train_state
from gradprom_jax.training.train_step import make_train_step, shared_forward_gradients
from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                 recognizer_tx_from_config)


def default_precision_cosine(a, b) -> jax.Array:
  """cos(a, b) over whole trees with every dot at the backend's default precision."""
  a, b = jax.tree.leaves(a), jax.tree.leaves(b)
  dot = sum(jnp.vdot(x, y) for x, y in zip(a, b))
  norm_a = jnp.sqrt(sum(jnp.vdot(x, x) for x in a))
  norm_b = jnp.sqrt(sum(jnp.vdot(y, y) for y in b))
  return dot / (norm_a * norm_b)


def float64_cosine(a, b) -> float:
  a = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(a)])
  b = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(b)])
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def batches(height: int, width: int, batch: int, steps: int):
  examples = list(generate_split(0, "train", batch * steps, height, width))
  for start in range(0, len(examples), batch):
    chunk = examples[start:start + batch]
    yield {"image": jnp.asarray(np.stack([e[1] for e in chunk]), jnp.float32) / 255.0,
           "mask": jnp.asarray(np.stack([e[2] for e in chunk]), jnp.int32),
           "label": jnp.asarray([e[3] for e in chunk], jnp.int32),
           "example_id": jnp.arange(start, start + len(chunk), dtype=jnp.int32)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--tiny", action="store_true", help="the smoke config's sizes (CPU checks)")
  parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                      help="training crops of H×W (default: the config's patch size)")
  args = parser.parse_args()

  config = base_config()
  if args.tiny:
    shrink_for_smoke_test(config)
  height, width = args.size or config.data.patch_size or config.data.image_size
  system = system_from_config(config, channels=3, num_classes=3)
  phases = phases_from_config(config)
  enhancer_tx = enhancer_tx_from_config(config, phases)
  recognizer_tx = recognizer_tx_from_config(config, phases)
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0), (height, width, 3))
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx,
                                 task_weight=dict.fromkeys(system.task_names, config.task_weight)))

  @jax.jit
  def cosines(state, batch, key):
    low_quality = system.degrade(key, batch["image"], batch["example_id"])
    out = shared_forward_gradients(system, state.enhancer_params, state.recognizer_params,
                                   low_quality, batch)
    g_e, g_t = out["enhancement_grads"], out["task_grads"]
    return g_e, g_t, cosine_similarity(g_e, g_t), default_precision_cosine(g_e, g_t)

  rows = []
  start = time.perf_counter()
  for index, batch in enumerate(batches(height, width, args.batch, args.steps)):
    g_e, g_t, highest, default = cosines(state, batch, jax.random.key(index))
    reference = float64_cosine(jax.device_get(g_e), jax.device_get(g_t))
    rows.append((reference, float(highest), float(default)))
    state, _ = step(state, batch)
  seconds = time.perf_counter() - start
  reference, highest, default = map(np.asarray, zip(*rows))
  print(json.dumps({
      "platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
      "jax": jax.__version__, "tiny": args.tiny, "image": [height, width], "batch": args.batch,
      "steps": len(rows), "seconds": round(seconds, 1),
      "parameters": int(sum(x.size for x in jax.tree.leaves(state.enhancer_params))),
      "cosine_float64_min_median_max": [round(float(f(reference)), 6)
                                        for f in (np.min, np.median, np.max)],
      "highest_max_abs_error": float(np.max(np.abs(highest - reference))),
      "default_max_abs_error": float(np.max(np.abs(default - reference))),
      "highest_gate_flips": int(np.sum((highest > 0) != (reference > 0))),
      "default_gate_flips": int(np.sum((default > 0) != (reference > 0))),
      "smallest_abs_cosine": float(np.min(np.abs(reference))),
  }))


if __name__ == "__main__":
  main()
