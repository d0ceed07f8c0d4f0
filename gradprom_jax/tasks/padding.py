"""The examples of a padded evaluation batch that count: every host accumulator (the kinds' task
metrics, the enhancement metrics) skips the rows its ``valid`` flags mark as padding."""
from __future__ import annotations

import numpy as np


def valid_rows(valid: np.ndarray | None, n: int) -> np.ndarray:
  """Boolean (n,) mask of the examples to count (all when ``valid`` is None).

  >>> valid_rows(None, 2), valid_rows(np.array([1, 0]), 2)
  (array([ True,  True]), array([ True, False]))
  """
  if valid is None:
    return np.ones(n, bool)
  valid = np.asarray(valid, bool)
  if valid.shape != (n,):
    raise ValueError(f"valid must have shape ({n},), got {valid.shape}")
  return valid
