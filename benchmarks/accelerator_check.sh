#!/usr/bin/env bash
# One check of a GPU/TPU machine, unchanged on any of them (about 10 minutes at most):
#   float32 vs bfloat16 train-step time, 1 device vs all devices, the compiled step's memory (and the
#   device's peak where the backend reports it), and the input pipeline at full image size.
# Installs nothing. Python: $PYTHON, else the repository's .venv/bin/python, else python3.
# Without an accelerator it runs tiny sizes on CPU, so CI can check that it works.
# Ends with one JSON line.
#
#   bash benchmarks/accelerator_check.sh            # on the accelerator machine, from anywhere
#   ACCEL_CHECK_TINY=1 bash benchmarks/accelerator_check.sh   # force the tiny sizes
#   ACCEL_CHECK_PIPELINE_TIMEOUT=100 ...   # give the input-pipeline part less than its 240 s
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

PLATFORM="$("$PYTHON" -c 'import jax; print(jax.default_backend())' 2>/dev/null)"
if [[ "$PLATFORM" == "cpu" || -n "${ACCEL_CHECK_TINY:-}" ]]; then TINY=1; else TINY=0; fi
echo "accelerator_check: platform $PLATFORM, tiny=$TINY, python $PYTHON" >&2

# Input pipeline at ISIC-like size (3x512x512, batch 32; tiny: 64x64, batch 4), 0 and 2 workers.
if [[ "$TINY" == 1 ]]; then PIPELINE_ARGS=(--full_size 64 --batch 4 --steps 3 --workers_list 0);
else PIPELINE_ARGS=(--full_size 512 --batch 32 --steps 20 --workers_list 0,2); fi
PIPELINE_JSON="$(timeout "${ACCEL_CHECK_PIPELINE_TIMEOUT:-240}" "$PYTHON" benchmarks/input_pipeline.py "${PIPELINE_ARGS[@]}" \
                 2>/dev/null | tail -n 1 || echo '{"error": "input pipeline failed or timed out"}')"

TINY="$TINY" PIPELINE_JSON="$PIPELINE_JSON" timeout 420 "$PYTHON" - <<'PY'
"""Step time and memory of the default GradProm step, float32 vs bfloat16, 1 vs all devices."""
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gradprom_jax.configuration.config import base_config, shrink_for_smoke_test
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                 recognizer_tx_from_config)
from gradprom_jax.training.train_state import create_train_state
from gradprom_jax.training.train_step import make_train_step

TINY = os.environ["TINY"] == "1"
SIZE, PER_DEVICE, STEPS = (32, 2, 3) if TINY else (512, 8, 20)


def measure(dtype: str, num_devices: int) -> dict:
  config = base_config()
  if TINY:
    shrink_for_smoke_test(config)
  config.model.dtype = dtype
  system = system_from_config(config, channels=3, num_classes=2)
  phases = phases_from_config(config)
  enhancer_tx = enhancer_tx_from_config(config, phases)
  recognizer_tx = recognizer_tx_from_config(config, phases)
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0), (SIZE, SIZE, 3))
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
  replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  batch_size = PER_DEVICE * num_devices
  batch = {"image": jax.random.uniform(jax.random.key(1), (batch_size, SIZE, SIZE, 3)),
           "mask": jnp.zeros((batch_size, SIZE, SIZE), jnp.int32)}
  state, batch = jax.device_put(state, replicated), jax.device_put(batch, split)
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx,
                                 task_weight=dict.fromkeys(system.task_names, config.task_weight)),
                 in_shardings=(replicated, split), out_shardings=(replicated, replicated),
                 donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  for _ in range(2):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(STEPS):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  return {"dtype": dtype, "devices": num_devices, "batch": batch_size, "image_size": SIZE,
          "step_ms": round(1e3 * step_s, 2), "images_per_s": round(batch_size / step_s, 1),
          "compile_s": round(compile_s, 1), "loss_finite": bool(np.isfinite(
              float(metrics["enhancement_loss"]) + float(metrics["task_loss"]))),
          "compiled_temp_bytes": int(analysis.temp_size_in_bytes) if analysis else None,
          "device_peak_bytes": peak}


runs = []
for devices in sorted({1, jax.device_count()}):
  for dtype in ("float32", "bfloat16"):
    runs.append(measure(dtype, devices))
    print(json.dumps(runs[-1]), flush=True)
by = {(r["dtype"], r["devices"]): r for r in runs}
print(json.dumps({
    "platform": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
    "device_count": jax.device_count(), "tiny": TINY, "runs": runs,
    "bfloat16_speedup_1_device": round(by[("float32", 1)]["step_ms"]
                                       / by[("bfloat16", 1)]["step_ms"], 3),
    "input_pipeline": json.loads(os.environ["PIPELINE_JSON"]),
}))
PY
