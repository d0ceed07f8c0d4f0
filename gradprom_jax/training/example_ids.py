"""The integer each example's degradation noise is keyed by: the id the loader put in its batch.

The loaders (:mod:`gradprom_jax.data.pipeline`) give every example its ``"example_id"`` (its position
in its global training batch; its index in an evaluation split). Read from the batch, the id stays
with its example on whichever row of whichever device it lands, so the degraded images do not depend
on the number of hosts or devices nor on the order of the devices in the mesh. A batch made by hand
(tests, images given to a trained run) carries no ids: its examples are numbered from ``first_id``.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp

from gradprom_jax.data import EXAMPLE_ID


def example_ids(batch: Mapping[str, Any], first_id: int | jax.Array = 0) -> jax.Array:
  """``batch["example_id"]``, or ``first_id + arange(batch size)`` for a batch without ids.

  >>> example_ids({"image": jnp.zeros((3, 2, 2, 1)), "example_id": jnp.array([7, 2, 5])}).tolist()
  [7, 2, 5]
  >>> example_ids({"image": jnp.zeros((3, 2, 2, 1))}, first_id=4).tolist()
  [4, 5, 6]
  """
  if EXAMPLE_ID in batch:
    return jnp.asarray(batch[EXAMPLE_ID])
  return first_id + jnp.arange(batch["image"].shape[0])
