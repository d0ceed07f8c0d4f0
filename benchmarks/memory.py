r"""Peak resident memory (RSS) and wall time of a short default training run, per method.

    .venv/bin/python benchmarks/memory.py                          # gradprom and joint, 30 steps
    .venv/bin/python benchmarks/memory.py --methods gradprom --steps 30 --data_dir /tmp/tfds

Each run is ``experiments/main.py --config configs/default.py`` (evaluation only at the end), in its own
process; its peak RSS is read from ``os.wait4``'s resource usage, so the runs do not mask each other.
The whole run counts: dataset build (when ``--data_dir`` is empty), compilation, training, the test
evaluation, checkpoints and samples.png. Ends with one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_of_run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
  """(peak RSS in MiB, wall seconds) of ``command``, which must succeed."""
  start = time.perf_counter()
  process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  # wait4 gives this child's own rusage; ru_maxrss is in KiB on Linux.
  _, status, usage = os.wait4(process.pid, 0)
  wall = time.perf_counter() - start
  stderr = process.stderr.read().decode(errors="replace")
  process.stderr.close()
  if os.waitstatus_to_exitcode(status) != 0:
    raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-3000:]}")
  return usage.ru_maxrss / 1024, wall


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "default.py"))
  parser.add_argument("--methods", default="gradprom,joint")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temporary dir).")
  args = parser.parse_args(argv)
  # One device, as a plain `python experiments/main.py` on this machine would use.
  env = {**os.environ, "XLA_FLAGS": re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                                           os.environ.get("XLA_FLAGS", ""))}
  results = {"steps": args.steps, "config": args.config, "peak_rss_mib": {}, "wall_s": {}}
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = args.data_dir or str(Path(scratch) / "tfds")
    for method in args.methods.split(","):
      command = [sys.executable, str(REPO / "experiments" / "main.py"), "--config", args.config,
                 "--workdir", str(Path(scratch) / method), f"--config.method={method}",
                 f"--config.num_train_steps={args.steps}", "--config.eval_every=1000000",
                 f"--config.data.data_dir={data_dir}"]
      rss, wall = peak_rss_of_run(command, env)
      results["peak_rss_mib"][method], results["wall_s"][method] = round(rss, 1), round(wall, 1)
      print(f"{method}: peak RSS {rss:.0f} MiB, {wall:.0f} s for {args.steps} steps "
            f"(+ compile, test evaluation, samples)", flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
