r"""Host overhead of the train loop: its wall time per step against the compiled step's own time.

    .venv/bin/python benchmarks/host_overhead.py                      # default config, 3 rounds
    .venv/bin/python benchmarks/host_overhead.py --rounds 16 --log_every 5 --data_dir /tmp/tfds

Runs ``train.train_and_evaluate`` on ``--config`` (default: ``configs/default.py``), unchanged but
for ``log_every`` (evaluation and checkpoints are set past the run). The loop waits for the device
only at its log steps, so the wall time from just after one log step to just after the next is
``log_every`` whole steps as the loop runs them: batches drawn and placed, steps dispatched, the
log step's metrics read and written. Then, once the input readers are idle again (they refill
their buffer behind the loop; that CPU time counts for the loop), the same compiled step runs
``log_every`` times in a tight loop on a copy of the state and the batch at hand, blocked only at
the end: the step's own time. Loop and tight loop alternate ``--rounds`` times after a first
interval (compilation), so load from other processes hits both alike; the run is then left.

``host_overhead`` = loop time per step / tight-loop time per step - 1: the median of the rounds'
ratios, with their quartiles; the target is <= 0.02. ``host_cpu_overhead`` compares the CPU time
of the process (all threads: XLA's, the readers', the loop's) per step in the two; other
processes' load disturbs it less than wall time, and on a CPU, where host and "device" share the
cores, it is the host's cost in compute. ``host_ms_per_step`` is the median time from the return
of one dispatch to the next call of the step (drawing a placed batch, the loop's own Python): the
loop hides it behind the device wherever it is shorter than a step. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADPROM_COMPILATION_CACHE", "off")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.train_loop_hooks import intercept_step_calls  # noqa: E402
from gradprom_jax.training import train  # noqa: E402
from benchmarks.step_time import load_config  # noqa: E402


class StopMeasuring(Exception):
  """Raised by the hook in place of the first step after the last round."""


def clocks() -> tuple[float, float]:
  """(wall seconds, CPU seconds of all this process's threads: XLA's, grain's, the loop's)."""
  return time.perf_counter(), time.process_time()


def wait_until_idle(poll_s: float = 0.1, busy_fraction: float = 0.1, timeout_s: float = 10.0):
  """Waits until this process's threads are idle, e.g. grain's readers have refilled their buffer.

  So that each interval's input work is counted in its own CPU time, and none of it runs during
  the tight loop.
  """
  deadline = time.perf_counter() + timeout_s
  while time.perf_counter() < deadline:
    cpu = time.process_time()
    time.sleep(poll_s)
    if time.process_time() - cpu < busy_fraction * poll_s:
      return


def tight_loop_seconds(compiled, state, batch, steps: int) -> tuple[float, float]:
  """(wall, CPU) seconds of ``steps`` calls of ``compiled`` on a copy of ``state``, blocked at the
  end only."""
  state = jax.block_until_ready(jax.tree.map(jnp.copy, state))   # the loop's own state is donated
  start = clocks()
  for _ in range(steps):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  return tuple(b - a for a, b in zip(start, clocks()))


def measure(config, *, rounds: int, workdir: str) -> dict:
  every = config.log_every
  interval_started = last_return = None
  loop_s, tight_s, host_gaps = [], [], []

  def hook(compiled, state, batch, index):
    nonlocal interval_started, last_return
    if index > 0 and index % every == 0:   # the step after a log step: the device is idle
      if interval_started is not None:
        wall = time.perf_counter() - interval_started[0]
        wait_until_idle()   # the readers' refill for this interval's batches counts in its CPU
        loop_s.append((wall, time.process_time() - interval_started[1]))
      else:
        wait_until_idle()
      if len(loop_s) == rounds:
        raise StopMeasuring
      tight_s.append(tight_loop_seconds(compiled, state, batch, every))
      interval_started = clocks()
    elif index > every:   # past the first interval (compilation)
      host_gaps.append(time.perf_counter() - last_return)
    outputs = compiled(state, batch)
    last_return = time.perf_counter()
    return outputs

  with intercept_step_calls(hook), contextlib.suppress(StopMeasuring):
    train.train_and_evaluate(config, workdir)
  loop_ms = [1e3 * wall / every for wall, _ in loop_s]
  tight_ms = [1e3 * wall / every for wall, _ in tight_s]
  ratios = [a / b for a, b in zip(loop_ms, tight_ms)]
  loop_cpu_ms = statistics.median(1e3 * cpu / every for _, cpu in loop_s)
  tight_cpu_ms = statistics.median(1e3 * cpu / every for _, cpu in tight_s)
  return {
      "platform": jax.devices()[0].platform, "devices": jax.device_count(),
      "log_every": every, "rounds": len(ratios),
      "loop_ms_per_step": [round(v, 1) for v in loop_ms],
      "tight_loop_ms_per_step": [round(v, 1) for v in tight_ms],
      "host_overhead": round(statistics.median(ratios) - 1, 4),
      "host_overhead_quartiles": [round(q - 1, 4) for q in statistics.quantiles(ratios, n=4)]
                                 if len(ratios) > 1 else None,
      "host_overhead_of_medians": round(
          statistics.median(loop_ms) / statistics.median(tight_ms) - 1, 4),
      "host_ms_per_step": round(1e3 * statistics.median(host_gaps), 2),
      "loop_cpu_ms_per_step": round(loop_cpu_ms, 1),
      "tight_loop_cpu_ms_per_step": round(tight_cpu_ms, 1),
      "host_cpu_overhead": round(loop_cpu_ms / tight_cpu_ms - 1, 4),
      "data_num_workers": config.data.num_workers, "data_prefetch": config.data.prefetch,
      "load_average_1min": round(os.getloadavg()[0], 1),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "default.py"),
                      help="Config file, optionally `file.py:options`.")
  parser.add_argument("--smoke", action="store_true", help="Add the config's `smoke` option.")
  parser.add_argument("--rounds", type=int, default=3, help="Loop / tight-loop pairs timed.")
  parser.add_argument("--log_every", type=int, default=None,
                      help="Steps per interval (default: the config's log_every).")
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temporary dir).")
  args = parser.parse_args(argv)
  config = load_config(args.config, smoke=args.smoke)
  if args.log_every:
    config.log_every = args.log_every
  # Never reached: the run is left after the last round, before any evaluation or checkpoint.
  config.num_train_steps = config.eval_every = config.checkpoint_every = (
      (args.rounds + 3) * config.log_every)
  with tempfile.TemporaryDirectory() as scratch:
    config.data.data_dir = args.data_dir or config.data.data_dir or str(Path(scratch) / "tfds")
    result = measure(config, rounds=args.rounds, workdir=str(Path(scratch) / "run"))
  print(f"loop {statistics.median(result['loop_ms_per_step']):.0f} ms/step, tight loop "
        f"{statistics.median(result['tight_loop_ms_per_step']):.0f} ms/step: host overhead "
        f"{100 * result['host_overhead']:.1f} % (target <= 2 %); the host spends "
        f"{result['host_ms_per_step']:.1f} ms between dispatches", flush=True)
  print(json.dumps({"config": args.config, **result}))


if __name__ == "__main__":
  main()
