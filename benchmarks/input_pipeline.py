"""Images/s of the training input pipeline, for the default synthetic config and for PH2 (if present).

    .venv/bin/python benchmarks/input_pipeline.py [--batch 32] [--steps 50] [--workers 0]

Builds into a temporary TFDS dir (the synthetic build time is reported too) and ends with one JSON line.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

from gradprom_jax.data import default_data_config, load_dataset, make_train_loader

PH2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ph2"


def images_per_second(dataset, *, batch: int, steps: int, workers: int, patch_size=None) -> float:
  iterator = iter(make_train_loader(dataset, global_batch_size=batch, seed=0, patch_size=patch_size,
                                    num_workers=workers))
  next(iterator)  # Warm-up: opens files, starts workers.
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return batch * steps / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--workers", type=int, default=0)
  args = parser.parse_args()
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
