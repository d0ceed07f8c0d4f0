"""Images/s of the training input pipeline, for the default synthetic config and for PH2 (if present).

    .venv/bin/python benchmarks/input_pipeline.py [--batch 32] [--steps 50] [--workers 0]
    .venv/bin/python benchmarks/input_pipeline.py --full_size 512 --workers_list 0,2 --step_ms 250
    .venv/bin/python benchmarks/input_pipeline.py --memory --batch 32

Builds into a temporary TFDS dir (the synthetic build time is reported too) and ends with one JSON line.

``--full_size S``: synthetic lesion images of S×S×3 (ISIC-like at 512) are built into a temporary
dir and read with each of ``--workers_list`` grain worker counts; the rate is compared with an
*assumed* accelerator step time ``--step_ms`` for one batch (nothing is measured on an accelerator
here): ``pipeline_over_step`` > 1 means the host keeps up. ``images_per_cpu_second`` (0 workers:
CPU time of all the process's threads) is what one core decodes and augments, for sizing
``data.num_workers``; ``--step_flops`` adds the TFLOP of the default step at that size and the
TFLOP/s the assumed step time stands for.

``--memory``: the host memory the train loader holds (growth of the process's resident set) after
``--steps`` batches and ``--wait_s`` seconds of reading ahead, at ISIC's patch size (96×128 crops of
192×256 synthetic images), in this process (0 workers).
"""
import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from gradprom_jax.data import default_data_config, load_dataset, make_train_loader

PH2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ph2"


def images_per_second(dataset, *, batch: int, steps: int, workers: int, patch_size=None,
                      cpu_seconds: list | None = None) -> float:
  """Images/s drawn from the train loader; ``cpu_seconds`` gets the process's CPU time."""
  iterator = iter(make_train_loader(dataset, global_batch_size=batch, seed=0, patch_size=patch_size,
                                    num_workers=workers))
  next(iterator)  # Warm-up: opens files, starts workers.
  start, start_cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(iterator)
  if cpu_seconds is not None:
    cpu_seconds.append(time.process_time() - start_cpu)
  return batch * steps / (time.perf_counter() - start)


def default_step_tflop(image_size: int, batch: int) -> float:
  """TFLOP of the default GradProm train step on ``batch`` images of ``image_size``²."""
  from memory import ENHANCERS, lower_default_step
  lowered = lower_default_step(image_size=image_size, dtype="float32", remat=False,
                               enhancer=ENHANCERS["edsr_32x4"], batch=batch)
  return lowered.cost_analysis()["flops"] / 1e12


def full_size(args) -> None:
  """Images/s at S×S×3 for each worker count, against the assumed step time."""
  results = {"image_size": args.full_size, "batch": args.batch, "assumed_step_ms": args.step_ms,
             "images_per_s": {}, "pipeline_over_step": {}}
  with tempfile.TemporaryDirectory() as data_dir:
    config = default_data_config()
    config.data_dir, config.image_size = data_dir, (args.full_size, args.full_size)
    config.num_train, config.num_validation, config.num_test = 2 * args.batch, 2, 2
    start = time.perf_counter()
    dataset = load_dataset(config)
    results["build_s"] = round(time.perf_counter() - start, 1)
    results["image_dtype"] = str(next(iter(make_train_loader(
        dataset, global_batch_size=args.batch, seed=0)))["image"].dtype)
    needed = args.batch / (args.step_ms / 1e3)
    for workers in (int(w) for w in args.workers_list.split(",")):
      cpu_seconds = []
      rate = images_per_second(dataset, batch=args.batch, steps=args.steps, workers=workers,
                               cpu_seconds=cpu_seconds)
      results["images_per_s"][workers] = round(rate, 1)
      results["pipeline_over_step"][workers] = round(rate / needed, 2)
      if workers == 0:   # all the decoding is in this process: images per second of one core
        results["images_per_cpu_second"] = round(args.batch * args.steps / cpu_seconds[0], 1)
      print(f"{args.full_size}x{args.full_size}x3, batch {args.batch}, {workers} workers: "
            f"{rate:.1f} images/s; a {args.step_ms:g} ms step needs {needed:.0f} images/s", flush=True)
  if args.step_flops:
    tflop = default_step_tflop(args.full_size, args.batch)
    results["default_step_tflop"] = round(tflop, 3)
    results["assumed_step_tflops_per_s"] = round(tflop / (args.step_ms / 1e3), 1)
  print(json.dumps(results))


def resident_bytes() -> int:
  """This process's resident set size (Linux)."""
  return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def loader_memory(args) -> None:
  """MiB the train loader holds after `--steps` batches and `--wait_s` s of reading ahead."""
  with tempfile.TemporaryDirectory() as data_dir:
    config = default_data_config()
    config.data_dir, config.num_train, config.num_validation, config.num_test = data_dir, 64, 2, 2
    dataset = load_dataset(config)
    before = resident_bytes()
    iterator = iter(make_train_loader(dataset, global_batch_size=args.batch, seed=0,
                                      patch_size=(96, 128), num_workers=args.workers))
    batch = [next(iterator) for _ in range(args.steps)][-1]
    time.sleep(args.wait_s)
    held = (resident_bytes() - before) / 2**20
    print(json.dumps({"batch": args.batch, "steps": args.steps, "wait_s": args.wait_s,
                      "loader_mib": round(held, 1), "mask_dtype": str(batch["mask"].dtype),
                      "batch_mib": round(sum(v.nbytes for v in batch.values()) / 2**20, 2)}))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--workers", type=int, default=0)
  parser.add_argument("--full_size", type=int, default=0, help="Square image size (0: default mode).")
  parser.add_argument("--workers_list", default="0,2", help="--full_size: worker counts to time.")
  parser.add_argument("--step_ms", type=float, default=250.0,
                      help="--full_size: assumed accelerator step time for one batch.")
  parser.add_argument("--step_flops", action="store_true",
                      help="--full_size: also count the default GradProm step's FLOPs at this size "
                           "(XLA's cost analysis of the lowered step, seconds) and the rate the "
                           "assumed step time implies.")
  parser.add_argument("--memory", action="store_true",
                      help="Host memory the train loader holds (RSS growth) at ISIC patch size.")
  parser.add_argument("--wait_s", type=float, default=10.0,
                      help="--memory: seconds the loader reads ahead before the measurement.")
  args = parser.parse_args()
  if args.memory:
    loader_memory(args)
    return
  if args.full_size:
    full_size(args)
    return
  results = {}
  with tempfile.TemporaryDirectory() as data_dir:
    config = default_data_config()
    config.data_dir = data_dir
    start = time.perf_counter()
    dataset = load_dataset(config)
    results["synthetic_build_s"] = round(time.perf_counter() - start, 1)
    results["synthetic_images_per_s"] = round(images_per_second(
        dataset, batch=args.batch, steps=args.steps, workers=args.workers), 1)
    print(f"synthetic_lesions {dataset.image_shape}: built in {results['synthetic_build_s']} s, "
          f"{results['synthetic_images_per_s']} images/s")
    if PH2.is_dir():
      config.name, config.manual_dir = "image_folder", str(PH2)
      config.class_names = ("common_nevus", "atypical_nevus", "melanoma")
      ph2 = load_dataset(config)
      results["ph2_images_per_s"] = round(images_per_second(
          ph2, batch=args.batch, steps=args.steps, workers=args.workers), 1)
      print(f"ph2 via image_folder {ph2.image_shape}: {results['ph2_images_per_s']} images/s")
  print(json.dumps({"batch": args.batch, "workers": args.workers, **results}))


if __name__ == "__main__":
  main()
