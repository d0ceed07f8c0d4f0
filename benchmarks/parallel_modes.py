r"""pmap beside mesh: train steps per second, and the time of an evaluation plus a checkpoint.

    .venv/bin/python benchmarks/parallel_modes.py                  # 4 simulated CPU devices
    .venv/bin/python benchmarks/parallel_modes.py --steps 20 --repeats 5 --config_option ""

On the smoke config (``--config_option``: the option of ``configs/default.py``), in one process,
for each mode: ``mesh``; ``pmap`` (the state's two layouts converted on the devices by
:class:`DataParallel`); and ``pmap_via_host``, pmap with the state copied through host NumPy at
every conversion (what ``DataParallel`` did before; kept here as the reference). Per mode:

* ``steps_per_s``: ``--steps`` warm train steps on one batch, timed to the last one's completion;
* ``to_global_ms``: the state made global for evaluation and checkpoints (:meth:`global_state`),
  until ready; ``to_replicas_ms``: that and back, placed for the step (:meth:`put_state`);
* ``eval_checkpoint_ms``: what the loop does at an evaluation step that also saves: the global
  state, the validation split scored, an (asynchronous) checkpoint saved and waited for.

Each figure is the median of ``--repeats``. Without ``XLA_FLAGS`` this script simulates 4 CPU
devices; all share the same cores, so it measures overheads, not a speed-up. The last line printed
is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("GRADPROM_COMPILATION_CACHE", "off")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from gradprom_jax import data as data_lib  # noqa: E402
from gradprom_jax.training import evaluation, parallel as parallel_lib  # noqa: E402
from gradprom_jax.training.checkpointing import Checkpointer  # noqa: E402
from gradprom_jax.training.train import build_system  # noqa: E402
from gradprom_jax.training.train_state import initial_state  # noqa: E402
from gradprom_jax.training.train_step import make_train_step  # noqa: E402
from gradprom_jax.training.training_spec import (enhancer_tx_from_config,  # noqa: E402
                                                 phases_from_config, recognizer_tx_from_config)

MODES = ("mesh", "pmap", "pmap_via_host")


class PmapViaHost(parallel_lib.DataParallel):
  """pmap with the state copied through host NumPy at each conversion (the reference)."""

  def __init__(self):
    super().__init__("pmap")

  def put_state(self, state):
    devices = jax.local_device_count()
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (devices, *np.shape(x))), state)

  def global_state(self, state):
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x[0])), state)


def _median_ms(function, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(function())
    times.append(time.perf_counter() - start)
  return round(1e3 * statistics.median(times), 1)


def measure(mode: str, *, config, dataset, system, steps: int, repeats: int, scratch: Path) -> dict:
  parallel = PmapViaHost() if mode == "pmap_via_host" else parallel_lib.DataParallel(mode)
  phases = phases_from_config(config)
  enhancer_tx = enhancer_tx_from_config(config, phases)
  recognizer_tx = recognizer_tx_from_config(config, phases)
  state = initial_state(config.seed, system, dataset.image_shape, enhancer_tx, recognizer_tx,
                        sharding=parallel.replicated)
  step = parallel.compile_step(make_train_step(
      system, phases[-1], enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
      task_weight=dict.fromkeys(system.task_names, config.task_weight),
      axis_name=parallel.axis_name))
  host_batch = next(iter(data_lib.make_train_loader(
      dataset, global_batch_size=config.batch_size, seed=config.seed,
      patch_size=config.data.patch_size)))
  batch = jax.block_until_ready(jax.tree.map(jax.device_put, parallel.put_batch(host_batch)))
  device_state = parallel.put_state(state)
  for _ in range(2):   # compile and warm up
    device_state, metrics = step(device_state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    device_state, metrics = step(device_state, batch)
  jax.block_until_ready((device_state, metrics))
  steps_per_s = steps / (time.perf_counter() - start)

  eval_step = jax.jit(evaluation.make_eval_step(system, None))
  eval_batch_size = -(-config.batch_size // parallel.num_devices) * parallel.num_devices
  checkpointer = Checkpointer(scratch / f"checkpoints_{mode}", save_interval_steps=1, max_to_keep=1)
  saved = [0]

  def eval_and_checkpoint():
    global_state = parallel.global_state(device_state)
    loader = data_lib.make_eval_loader(dataset, "validation", global_batch_size=eval_batch_size)
    results = evaluation.evaluate(system, eval_step, global_state.for_evaluation(), loader,
                                  parallel.put_global_batch, eval_batch_size)
    saved[0] += 1
    checkpointer.save(saved[0], global_state, force=True)
    checkpointer.wait_until_finished()
    return results

  eval_and_checkpoint()   # compiles the eval step
  record = {
      "mode": mode, "steps_per_s": round(steps_per_s, 2),
      "to_global_ms": _median_ms(lambda: parallel.global_state(device_state), repeats),
      "to_replicas_ms": _median_ms(
          lambda: parallel.put_state(parallel.global_state(device_state)), repeats),
      "eval_checkpoint_ms": _median_ms(eval_and_checkpoint, repeats),
  }
  checkpointer.close()
  return record


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config_option", default="smoke", help="Option of configs/default.py.")
  parser.add_argument("--steps", type=int, default=10, help="Timed train steps per mode.")
  parser.add_argument("--repeats", type=int, default=3, help="Repeats of each conversion timing.")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temporary dir).")
  args = parser.parse_args(argv)
  config = default.get_config(args.config_option or None)
  with tempfile.TemporaryDirectory() as scratch:
    config.data.data_dir = args.data_dir or str(Path(scratch) / "tfds")
    dataset = data_lib.load_dataset(config.data)
    system = build_system(config, dataset)
    records = []
    for mode in args.modes.split(","):
      records.append(measure(mode, config=config, dataset=dataset, system=system,
                             steps=args.steps, repeats=args.repeats, scratch=Path(scratch)))
      print(" ".join(f"{k}={v}" for k, v in records[-1].items()), flush=True)
  print(json.dumps({"platform": jax.devices()[0].platform, "devices": jax.device_count(),
                    "jax": jax.__version__, "config_option": args.config_option,
                    "steps": args.steps, "repeats": args.repeats, "runs": records}))


if __name__ == "__main__":
  main()
