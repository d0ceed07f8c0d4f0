"""Metrics of the enhanced images: per-example PSNR and SSIM on device, their means on the host.

Each task kind's metrics live in its module of :mod:`gradprom_jax.tasks`, split the same way:
per-example values on device, whole-split accumulation on the host (dataset-level numbers are
never averages of per-batch numbers). Host accumulators merge across shards and ignore padded
examples through a ``valid`` mask. On several hosts, gather the per-example device arrays first
(``jax.experimental.multihost_utils.process_allgather``) and update one accumulator.

clu.metrics is not used: its ``Collection``s average on device per batch, while AUC needs every
score and the callers here already work on host arrays.

>>> import numpy as np
>>> EnhancementMetrics().update(np.array([30.0, 40.0]), np.array([0.5, 0.7])).compute()["psnr"]
35.0
"""

from __future__ import annotations

import dataclasses

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

from gradprom_jax.tasks.padding import valid_rows

# ---------------------------------------------------------------- on device


def psnr(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example PSNR (dB) of [0, 1] images (N, H, W, C) -> (N,).

  Identical images give +inf.

  >>> psnr(jnp.zeros((2, 4, 4, 1)), jnp.full((2, 4, 4, 1), 0.1))
  Array([20., 20.], dtype=float32)
  """
  return dm_pix.psnr(pred, target)


def ssim(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example SSIM of [0, 1] images (N, H, W, C) -> (N,).

  dm-pix defaults: 11x11 Gaussian window, sigma 1.5, VALID borders, mean
  over pixels and channels (equal to scikit-image's `structural_similarity`
  with `gaussian_weights=True, use_sample_covariance=False, data_range=1`).

  >>> x = jnp.linspace(0, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
  >>> ssim(x, x).round(4)
  Array([1., 1.], dtype=float32)
  """
  return dm_pix.ssim(pred, target, max_val=1.0)


# ---------------------------------------------------------------- on host


@dataclasses.dataclass
class EnhancementMetrics:
  """Mean PSNR and SSIM over images (the convention of the SR literature).

  `update` adds in place and returns self; `merge` returns a new accumulator.

  >>> m = EnhancementMetrics().update(np.array([30.0, 40.0, 99.0]),
  ...                                 np.array([0.75, 0.25, 0.0]),
  ...                                 valid=np.array([True, True, False]))
  >>> m.compute()
  {'psnr': 35.0, 'ssim': 0.5}
  """
  psnr_sum: float = 0.0
  ssim_sum: float = 0.0
  count: int = 0

  def update(self, psnr_values: np.ndarray, ssim_values: np.ndarray,
             valid: np.ndarray | None = None) -> EnhancementMetrics:
    """Adds per-example PSNR and SSIM (N,), skipping examples not `valid`."""
    psnr_values = np.asarray(psnr_values, np.float64)
    keep = valid_rows(valid, len(psnr_values))
    self.psnr_sum += float(psnr_values[keep].sum())
    self.ssim_sum += float(np.asarray(ssim_values, np.float64)[keep].sum())
    self.count += int(keep.sum())
    return self

  def merge(self, other: EnhancementMetrics) -> EnhancementMetrics:
    """Accumulator of both sets of examples."""
    return EnhancementMetrics(self.psnr_sum + other.psnr_sum,
                              self.ssim_sum + other.ssim_sum,
                              self.count + other.count)

  def compute(self) -> dict[str, float]:
    """Mean `psnr` (dB) and `ssim` over all valid examples (nan if none)."""
    count = self.count or np.nan
    return {"psnr": self.psnr_sum / count, "ssim": self.ssim_sum / count}
