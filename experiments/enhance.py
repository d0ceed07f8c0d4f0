r"""Applies a trained run to a folder of images: enhanced PNGs plus the recogniser's predictions.

  python experiments/enhance.py --workdir workdirs/default --input_dir my_low_quality_images \
      --output_dir enhanced/
  python experiments/enhance.py --workdir workdirs/default --input_dir high_quality_images \
      --output_dir demo/ --degrade     # simulate the low-quality input first (as in evaluation)

Input images are taken as the low-quality images the run was trained to enhance (converted to RGB or
grey to match the run): for a super-resolution run they are the low-resolution inputs, and the
outputs are `scale` times larger on each side (a 64x64 input of a x4 run gives 256x256). With
`--degrade` they are taken as high-quality images instead and degraded first, as in evaluation;
the degraded input is saved too, so each output has its before/after pair.

Writes `OUTPUT/enhanced/<name>.png`; with `--degrade` also `OUTPUT/degraded/<name>.png` (what the
enhancer saw); and what each task's kind writes of its predictions (``TaskKind.prediction_image``
and ``.prediction_columns``): `OUTPUT/masks/<name>.png` (segmentation: class index scaled to 0..255)
or `OUTPUT/predictions.csv` (classification: predicted class and probabilities); a multi-task run
writes both (its columns suffixed `/<task>`).
"""
import csv
import sys
from pathlib import Path

import numpy as np
from absl import app, flags, logging
from PIL import Image

from gradprom_jax.inference import load_trained_system
from gradprom_jax.training.checkpointing import CheckpointRestoreError
from gradprom_jax.training.console import hide_library_noise
from gradprom_jax.training.run_config import ConfigMismatchError

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir.")
_INPUT_DIR = flags.DEFINE_string("input_dir", None, "Folder of images (png, jpg, bmp, tif).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where outputs are written.")
_DEGRADE = flags.DEFINE_bool(
    "degrade", False, "Treat inputs as high quality and degrade them first (the degraded input is "
    "saved to OUTPUT/degraded/); without it, inputs are the low-quality images themselves.")
flags.mark_flags_as_required(["workdir", "input_dir", "output_dir"])

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _to_png(array: np.ndarray) -> Image.Image:
  pixels = np.clip(np.rint(np.asarray(array) * 255), 0, 255).astype(np.uint8)
  return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def main(argv):
  del argv
  hide_library_noise()   # orbax logs every step of a restore at INFO
  input_dir = Path(_INPUT_DIR.value)
  if not input_dir.is_dir():
    sys.exit(f"enhance.py: --input_dir {input_dir} is not a folder.")
  try:
    trained = load_trained_system(_WORKDIR.value)
  except (FileNotFoundError, ConfigMismatchError,        # not a run's workdir, no checkpoint
          CheckpointRestoreError) as e:                   # yet, or a run of older code
    sys.exit(f"enhance.py: {e}")
  channels = trained.system.enhancer.channels
  paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not paths:
    raise app.UsageError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {_INPUT_DIR.value}")
  output = Path(_OUTPUT_DIR.value)
  (output / "enhanced").mkdir(parents=True, exist_ok=True)
  if _DEGRADE.value:
    (output / "degraded").mkdir(exist_ok=True)
  system = trained.system
  rows = []
  for index, path in enumerate(paths):
    with Image.open(path) as image:
      pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"), np.float32) / 255
    pixels = pixels.reshape(*pixels.shape[:2], channels)
    if _DEGRADE.value:
      trained.system.degradation.check_image_size(*pixels.shape[:2])
    out = trained.enhance(pixels[None], degrade=_DEGRADE.value, first_id=index)
    _to_png(out["enhanced"][0]).save(output / "enhanced" / f"{path.stem}.png")
    if _DEGRADE.value:
      _to_png(out["input"][0]).save(output / "degraded" / f"{path.stem}.png")
    row = {}
    for head in system.heads:
      probabilities, names = out["probabilities"][head.name][0], trained.class_names[head.name]
      picture = head.kind.prediction_image(probabilities)   # e.g. segmentation's masks/
      if picture is not None:
        folder, pixels = picture
        (output / folder).mkdir(exist_ok=True)
        _to_png(pixels).save(output / folder / f"{path.stem}.png")
      row.update({system.metric_key(column, head): value for column, value
                  in head.kind.prediction_columns(probabilities, names).items()})
    if row:
      rows.append({"image": path.name, **row})
  if rows:
    with open(output / "predictions.csv", "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  logging.info("Wrote %d enhanced images to %s (checkpoint step %d).", len(paths), output,
               trained.step)
  scale = trained.system.degradation.scale
  taken_as = ("high quality, degraded first (saved in degraded/)" if _DEGRADE.value
              else "low quality" + (f", enhanced to x{scale} their size" if scale > 1 else ""))
  print(f"Enhanced {len(paths)} images (taken as {taken_as}) with the step-{trained.step} "
        f"checkpoint of {_WORKDIR.value} -> {output}")


if __name__ == "__main__":
  app.run(main)
