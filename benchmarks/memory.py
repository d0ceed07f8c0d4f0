r"""Memory of training: peak RSS of short runs, or the compiled train step's per-device bytes.

    .venv/bin/python benchmarks/memory.py                          # gradprom and joint, 30 steps
    .venv/bin/python benchmarks/memory.py --methods gradprom --steps 30 --data_dir /tmp/tfds
    .venv/bin/python benchmarks/memory.py --table                  # full image size, compile only
    .venv/bin/python benchmarks/memory.py --table --sizes 64 --dtypes float32 --remat off,on
    XLA_FLAGS=--xla_backend_optimization_level=0 .venv/bin/python benchmarks/memory.py --table \
        --out results/benchmarks/memory_table.json --resume    # the missing rows, compiled faster

Default mode: each run is ``experiments/main.py --config configs/default.py`` (evaluation only at the
end), in its own process; its peak RSS is read from ``os.wait4``'s resource usage, so the runs do not
mask each other. The whole run counts: dataset build (when ``--data_dir`` is empty), compilation,
training, the test evaluation, checkpoints and samples.png. Ends with one JSON line.

``--table``: nothing runs. The GradProm train step of the default config (×4 super-resolution +
segmentation, 3 channels) is lowered and compiled for one device at ``--batch`` images per device,
for every image size × compute dtype × remat × enhancer, and XLA's own memory analysis of the
compiled program gives its bytes: arguments (state + batch) + outputs − donated aliases + temporaries
(activations kept for the backward pass). Under data parallelism every device holds a replicated
state and its own batch slice, so this is the per-device figure. The figures are those of the
backend compiling (XLA:CPU here; a GPU's buffer assignment and convolution workspaces differ).
One JSON line per configuration, then a markdown table saying which fit a 16, 40 and 80 GiB device
at JAX's default GPU memory fraction (75 %), then one JSON line with all of them.

XLA:CPU compiles the full-size steps slowly (1–6 min each at the default optimisation level on 2
shared cores). ``--xla_backend_optimization_level=0`` lowers only the LLVM code generation's effort;
buffer assignment, hence every byte count here, is decided before it: the 256² and 512² rows came
out identical at both levels, in 30–70 % of the time. Each row records its ``xla_flags``.
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
# Enhancers of the table: the default config's, and a larger EDSR (64 features, 16 blocks).
ENHANCERS = {"edsr_32x4": {"name": "edsr", "features": 32, "num_blocks": 4},
             "edsr_64x16": {"name": "edsr", "features": 64, "num_blocks": 16}}
DEVICE_GIB = (16, 40, 80)
# JAX preallocates this fraction of a GPU's memory by default (XLA_PYTHON_CLIENT_MEM_FRACTION).
USABLE_FRACTION = 0.75


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


def lower_default_step(*, image_size: int, dtype: str, remat: bool, enhancer: dict, batch: int,
                       method: str = "gradprom"):
  """The default config's train step for ``batch`` square images, lowered from shapes only."""
  import jax
  import jax.numpy as jnp

  from gradprom_jax.configuration.config import base_config
  from gradprom_jax.configuration.run_spec import system_from_config
  from gradprom_jax.training.train_state import create_train_state
  from gradprom_jax.training.train_step import make_train_step
  from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                   recognizer_tx_from_config)

  config = base_config()
  config.method, config.model.dtype, config.model.remat = method, dtype, remat
  config.model.enhancer.update(enhancer)
  system = system_from_config(config, channels=3, num_classes=2)
  phases = phases_from_config(config)
  enhancer_tx = enhancer_tx_from_config(config, phases)
  recognizer_tx = recognizer_tx_from_config(config, phases)

  def init_state():
    enhancer_params, recognizer_params = system.init_params(jax.random.key(0),
                                                            (image_size, image_size, 3))
    return create_train_state(seed=0, enhancer_params=enhancer_params,
                              recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                              recognizer_tx=recognizer_tx)

  state = jax.eval_shape(init_state)
  # float32 images, as the loaders yielded them when the table was begun (now uint8, made float in
  # the step): 3 bytes per pixel more in the arguments, a few MiB against GiB of temporaries.
  batch_shapes = {"image": jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32),
                  "mask": jax.ShapeDtypeStruct((batch, image_size, image_size), jnp.int32)}
  step = make_train_step(system, phases[-1], enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
                         task_weight=dict.fromkeys(system.task_names, config.task_weight))
  return jax.jit(step, donate_argnums=0).lower(state, batch_shapes)


def compiled_step_memory(*, image_size: int, dtype: str, remat: bool, enhancer: dict,
                         batch: int, method: str = "gradprom") -> dict:
  """Bytes of the default config's train step compiled for one device (lowered from shapes only)."""
  import jax

  start = time.perf_counter()
  analysis = lower_default_step(image_size=image_size, dtype=dtype, remat=remat, enhancer=enhancer,
                                batch=batch, method=method).compile().memory_analysis()
  compile_s = time.perf_counter() - start
  sizes = {name: int(getattr(analysis, f"{name}_size_in_bytes"))
           for name in ("argument", "output", "alias", "temp")}
  total = sizes["argument"] + sizes["output"] - sizes["alias"] + sizes["temp"]
  return {"image_size": image_size, "dtype": dtype, "remat": remat, "batch_per_device": batch,
          "method": method, **{f"{k}_bytes": v for k, v in sizes.items()}, "total_bytes": total,
          "fits_gib": [gib for gib in DEVICE_GIB if total <= USABLE_FRACTION * gib * 2**30],
          "compile_s": round(compile_s, 1), "platform": jax.devices()[0].platform,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def markdown_table(rows: list[dict]) -> str:
  """The table of ``--table``: one line per configuration, sizes in GiB."""
  gib = lambda b: f"{b / 2**30:.2f}"
  lines = ["| enhancer | image | images/device | dtype | remat | temp GiB | total GiB | "
           "fits (GiB device) |", "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    fits = ", ".join(map(str, r["fits_gib"])) or "none"
    lines.append(f"| {r['enhancer']} | {r['image_size']}² | {r['batch_per_device']} | "
                 f"{r['dtype']} | {'on' if r['remat'] else 'off'} | {gib(r['temp_bytes'])} | "
                 f"{gib(r['total_bytes'])} | {fits} |")
  return "\n".join(lines)


def _row_key(row: dict) -> tuple:
  return row["enhancer"], row["image_size"], row["dtype"], row["remat"], row["batch_per_device"]


def memory_table(args: argparse.Namespace) -> None:
  rows = []
  out = Path(args.out) if args.out else None
  # --resume: the rows --out already holds are kept, not compiled again.
  done = ({_row_key(r): r for r in json.loads(out.read_text())["rows"]}
          if args.resume and out and out.exists() else {})
  for size in (int(s) for s in args.sizes.split(",")):
    for name in args.enhancers.split(","):
      for dtype in args.dtypes.split(","):
        for remat in (r == "on" for r in args.remat.split(",")):
          row = done.pop((name, size, dtype, remat, args.batch), None)
          if row is None:
            row = {"enhancer": name, **compiled_step_memory(
                image_size=size, dtype=dtype, remat=remat, enhancer=ENHANCERS[name],
                batch=args.batch)}
          rows.append(row)
          print(json.dumps(row), flush=True)
          if out:  # Rewritten after every row, so a long run that is stopped keeps what finished.
            out.write_text(json.dumps({"rows": rows + list(done.values())}, indent=1) + "\n")
  # Rows of --out outside this grid stay; all in one order: size, images per device, enhancer...
  rows = sorted([*rows, *done.values()], key=lambda r: (
      r["image_size"], -r["batch_per_device"], list(ENHANCERS).index(r["enhancer"]),
      ("float32", "bfloat16").index(r["dtype"]), r["remat"]))
  if out:
    out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
  print(markdown_table(rows))
  print(json.dumps({"rows": rows}))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=str(REPO / "configs" / "default.py"))
  parser.add_argument("--methods", default="gradprom,joint")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--data_dir", default=None, help="TFDS data dir (default: a temporary dir).")
  parser.add_argument("--table", action="store_true",
                      help="Compiled per-device bytes at full image size instead of running.")
  parser.add_argument("--sizes", default="256,512,1024", help="--table: square image sizes.")
  parser.add_argument("--dtypes", default="float32,bfloat16", help="--table: compute dtypes.")
  parser.add_argument("--remat", default="off,on", help="--table: remat settings.")
  parser.add_argument("--enhancers", default=",".join(ENHANCERS), help="--table: enhancers.")
  parser.add_argument("--batch", type=int, default=8, help="--table: images per device.")
  parser.add_argument("--out", default=None, help="--table: also write the rows to this JSON file.")
  parser.add_argument("--resume", action="store_true",
                      help="--table: keep the rows --out already holds instead of compiling them.")
  args = parser.parse_args(argv)
  if args.table:
    memory_table(args)
    return
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
