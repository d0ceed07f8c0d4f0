"""Images travel as uint8 from the files to the devices and become float32 in [0, 1] on the device.

The input pipeline yields the decoded uint8 pixels: 4× fewer bytes to batch, to pass between grain
worker processes and to copy to the devices, and no float conversion on the host. Every compiled
program that reads a loader's batch (train step, evaluation, sample grid, gate probe) starts with
:func:`with_float_images`. The conversion gives, bit for bit, the images the host used to make,
``float32(v) / 255`` (``tests/test_image_dtype.py``), so the models see the same images as before.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

# float32(v) / 255 for each uint8 v, computed on the host. The device looks the values up rather
# than dividing: XLA rewrites a division by a constant as a product with its reciprocal, which
# differed in the last bit for 126 of the 256 values on CPU. The lookup is exact on any backend and
# took no longer than the division on CPU (a 32×512²×3 batch).
UNIT_FLOAT_OF_UINT8 = np.arange(256, dtype=np.float32) / np.float32(255)


def to_unit_float(images: Any) -> Any:
  """uint8 pixels -> float32 in [0, 1] (``float32(v) / 255``); other images are returned unchanged.

  Works on numpy arrays (on the host) and on jax arrays, traced inside ``jax.jit`` included.

  >>> to_unit_float(np.array([0, 51, 255], np.uint8))
  array([0. , 0.2, 1. ], dtype=float32)
  >>> np.asarray(to_unit_float(jnp.array([0, 51, 255], jnp.uint8)))
  array([0. , 0.2, 1. ], dtype=float32)
  >>> to_unit_float(np.float32(0.5))
  np.float32(0.5)
  """
  if images.dtype != np.uint8:
    return images
  if isinstance(images, np.ndarray):
    return images.astype(np.float32) / np.float32(255)
  return jnp.asarray(UNIT_FLOAT_OF_UINT8).at[images].get(mode="promise_in_bounds")


def with_float_images(batch: Mapping[str, Any]) -> dict[str, Any]:
  """``batch`` with its ``"image"`` made float by :func:`to_unit_float` and its uint8 ``"mask"``
  (class ids) made int32, the losses' and metrics' label dtype; other entries unchanged.

  >>> out = with_float_images({"image": np.full((1, 2, 2, 3), 255, np.uint8),
  ...                          "mask": np.ones((1, 2, 2), np.uint8), "label": 1})
  >>> out["image"].max(), out["mask"].dtype
  (np.float32(1.0), dtype('int32'))
  """
  out = {**batch, "image": to_unit_float(batch["image"])}
  if "mask" in out and out["mask"].dtype == np.uint8:   # masks travel as uint8 (4x fewer bytes)
    out["mask"] = out["mask"].astype(np.int32)
  return out
