r"""Does the train loop dispatch steps ahead of the device? The real loop, with a heavy step.

    .venv/bin/python benchmarks/dispatch_ahead.py                   # 6 steps, 1 device
    XLA_FLAGS=--xla_force_host_platform_device_count=4 .venv/bin/python benchmarks/dispatch_ahead.py

Runs ``train.train_and_evaluate`` on the smoke config with its train step replaced by a chain of
``--matmuls`` products of ``--matmul_size``² matrices (seeded by the batch, so it runs on every
step: about a second each on a 2-core CPU). Everything else is the real loop: the grain loader, the
device prefetcher, the compiled step with its shardings and donated state, logging, the preemption
guard. Evaluation and checkpoints are set past the run, and logging too unless ``--log_every``
puts log steps inside it (a log step reads the previous log step's metrics, so it should not wait
for the step just dispatched). The run is left (by an exception from the hook) when it would
dispatch one step more than ``--steps``.

For every dispatch it records how long the call took and which earlier steps' outputs were
already computed when it returned (``jax.Array.is_ready``, which does not block); a background
thread waits on each step's output in turn and records when it was done. If the loop waited for
the device anywhere between two steps (a host read such as ``float(loss)``, or a runtime that
executes synchronously), step 1 would be done before step 3 is dispatched; ``--blocking_control``
also runs the loop with a wait for each step's output after its dispatch (what a ``float(loss)``
per step does) to show that the measurement tells the two apart.

Ends with one JSON line: ``dispatched_before_first_step_done`` (how many steps the host had
dispatched when step 1 finished), ``ready_at_dispatch`` (for each step, which earlier steps were
done when it was dispatched), ``dispatch_ms`` (each call; the first includes compilation),
``step_ms`` (median time between consecutive steps finishing) and ``dispatch_span_ms`` (from the
return of step 1's call to that of the last step's), and ``blocking_control`` with the same keys.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADPROM_COMPILATION_CACHE", "off")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.train_loop_hooks import intercept_step_calls, replace_train_step  # noqa: E402
from configs import default  # noqa: E402
from gradprom_jax.training import train  # noqa: E402


def heavy_step_maker(matmul_size: int, matmuls: int):
  """A ``make_train_step`` stand-in whose step only counts steps and multiplies matrices."""
  def make_step(*args, **kwargs):
    del args, kwargs

    def step(state, batch):
      # Seeded by the batch, so XLA cannot fold the chain into a constant at compile time.
      x = jnp.full((matmul_size, matmul_size), 1.0 / matmul_size) + 1e-3 * jnp.mean(batch["image"])
      for _ in range(matmuls):
        x = jnp.tanh(x @ x)
      return state.replace(step=state.step + 1), {"nonfinite_streak": jnp.float32(0),
                                                  "heavy": jnp.mean(x)}
    return step
  return make_step


class StopMeasuring(Exception):
  """Raised by the hook in place of the step after the last measured one."""


class CompletionWatcher:
  """A thread that waits on each step's output in turn and notes when it was done."""

  def __init__(self):
    self.done_at: list[float] = []
    self._queue: queue.Queue = queue.Queue()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def watch(self, output: jax.Array) -> None:
    self._queue.put(output)

  def _run(self) -> None:
    while (output := self._queue.get()) is not None:
      output.block_until_ready()   # Blocks this thread only; the loop's thread keeps dispatching.
      self.done_at.append(time.perf_counter())

  def join(self) -> None:
    self._queue.put(None)
    self._thread.join()


def measure(*, steps: int, matmul_size: int, matmuls: int, data_dir: str | None,
            block_each_step: bool = False, log_every: int | None = None) -> dict:
  """The run's record; ``block_each_step``: the hook waits for each step, as a host read would."""
  config = default.get_config("smoke")
  config.num_train_steps = 100 * steps   # never reached: the run is stopped after `steps`
  config.log_every = config.eval_every = config.checkpoint_every = 100 * steps
  config.log_every = log_every or config.log_every
  outputs, dispatched_at, dispatch_s, ready_at_dispatch = [], [], [], []
  watcher = CompletionWatcher()

  def hook(compiled, state, batch, index):
    if index == steps:   # Leaves the loop before it dispatches one more step.
      raise StopMeasuring
    start = time.perf_counter()
    new_state, metrics = compiled(state, batch)
    returned = time.perf_counter()
    ready_at_dispatch.append([o.is_ready() for o in outputs])
    dispatched_at.append(returned)
    dispatch_s.append(returned - start)
    outputs.append(metrics["heavy"])
    watcher.watch(metrics["heavy"])
    if block_each_step:
      metrics["heavy"].block_until_ready()
    return new_state, metrics

  with tempfile.TemporaryDirectory() as scratch:
    config.data.data_dir = data_dir or str(Path(scratch) / "tfds")
    with (replace_train_step(heavy_step_maker(matmul_size, matmuls)), intercept_step_calls(hook),
          contextlib.suppress(StopMeasuring)):
      train.train_and_evaluate(config, str(Path(scratch) / "run"))
  watcher.join()
  assert len(outputs) == steps, f"{len(outputs)} steps ran, not {steps}"
  first_done = watcher.done_at[0]
  return {
      "platform": jax.devices()[0].platform, "devices": jax.device_count(), "steps": steps,
      "matmul_size": matmul_size, "matmuls": matmuls,
      "dispatched_before_first_step_done": sum(t < first_done for t in dispatched_at),
      "ready_at_dispatch": ready_at_dispatch,
      "dispatch_ms": [round(1e3 * s, 1) for s in dispatch_s],
      "first_step_done_ms_after_dispatch": round(1e3 * (first_done - dispatched_at[0]), 1),
      "step_ms": round(1e3 * statistics.median(
          b - a for a, b in zip(watcher.done_at, watcher.done_at[1:])), 1),
      "dispatch_span_ms": round(1e3 * (dispatched_at[-1] - dispatched_at[0]), 1),
      "blocking_each_step": block_each_step, "log_every": config.log_every,
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=6, help="Steps dispatched before the stop.")
  parser.add_argument("--matmul_size", type=int, default=768)
  parser.add_argument("--matmuls", type=int, default=12)
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temporary dir).")
  parser.add_argument("--blocking_control", action="store_true",
                      help="Also run a loop that waits for every step (what float(loss) in the "
                           "loop would do), to show the measurement tells the two apart.")
  parser.add_argument("--log_every", type=int, default=None,
                      help="Log steps inside the measured steps (default: none).")
  args = parser.parse_args(argv)
  if args.steps < 2:
    parser.error("--steps must be at least 2")
  with tempfile.TemporaryDirectory() as scratch:
    measure_run = lambda block: measure(
        steps=args.steps, matmul_size=args.matmul_size, matmuls=args.matmuls,
        data_dir=args.data_dir or str(Path(scratch) / "tfds"), block_each_step=block,
        log_every=args.log_every)
    result = measure_run(False)
    if args.blocking_control:
      result["blocking_control"] = measure_run(True)
  print(f"{result['devices']} {result['platform']} device(s): step 1 was done after "
        f"{result['dispatched_before_first_step_done']} of {args.steps} steps had been dispatched; "
        f"a step takes {result['step_ms']:.0f} ms, dispatching steps 2..{args.steps} took "
        f"{result['dispatch_span_ms']:.0f} ms", flush=True)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
