"""Training batches placed on the devices ahead of time, with an exact, checkpointable position.

:class:`DevicePrefetcher` wraps the host iterator (a grain iterator) and keeps the next ``size``
batches already handed to the devices: ``jax.device_put`` returns at once and copies in the
background, so the copy of batch k+1 overlaps step k. Flax's ``jax_utils.prefetch_to_device`` does
this for ``pmap`` only; this works for the mesh (global ``jax.Array`` batches) and ``pmap`` alike.

Its ``get_state`` is the position after the last batch *handed out*, not after the last one read:
the prefetched batches are read again after a restore, never skipped. It speaks the protocol of
grain's orbax checkpoint handler (``get_state() -> bytes``, ``set_state(bytes)``,
``start_prefetch()``) and writes the same JSON as the wrapped iterator, so checkpoints made with and
without prefetching restore into each other.
"""
from __future__ import annotations

import collections
import json
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


class DevicePrefetcher:
  """Iterates ``place(batch)`` for the batches of ``iterator``, ``size`` of them placed ahead.

  >>> import grain, numpy as np
  >>> loader = grain.MapDataset.range(10).map(lambda i: {"x": np.full(2, i)}).to_iter_dataset()
  >>> batches = DevicePrefetcher(iter(loader), place=jax.device_put, size=2)
  >>> [int(next(batches)["x"][0]) for _ in range(3)]
  [0, 1, 2]
  >>> state = batches.get_state()          # After the 3 handed out, although 5 were read.
  >>> again = DevicePrefetcher(iter(loader), place=jax.device_put, size=2)
  >>> again.set_state(state)
  >>> int(next(again)["x"][0])
  3
  """

  def __init__(self, iterator: Iterator[Any], place: Callable[[Any], Any], size: int = 2):
    if size < 0:
      raise ValueError(f"prefetch size must be >= 0, got {size}")
    self._iterator, self._place, self._size = iterator, place, size
    self._queue: collections.deque = collections.deque()   # (placed batch, state after it)
    self._consumed_state: dict | None = None   # None: nothing handed out since the last set_state

  def __iter__(self) -> "DevicePrefetcher":
    return self

  def _read_one(self) -> None:
    batch = next(self._iterator)
    self._queue.append((self._place(batch), self._iterator.get_state()))

  def __next__(self) -> Any:
    if not self._queue:
      self._read_one()
    batch, self._consumed_state = self._queue.popleft()
    while len(self._queue) < self._size:   # Placed while the caller's step runs.
      self._read_one()
    return batch

  def get_state(self) -> bytes:
    state = (self._iterator.get_state() if self._consumed_state is None
             else self._consumed_state)
    return json.dumps(state, indent=4).encode()

  def set_state(self, state: bytes | dict) -> None:
    """Moves to a saved position; the batches placed ahead are dropped (read again from there)."""
    self._queue.clear()
    self._consumed_state = None
    self._iterator.set_state(json.loads(state) if isinstance(state, (bytes, str)) else state)

  def start_prefetch(self) -> None:
    """Called by grain's checkpoint handler after a restore; placing starts at the next batch."""


def device_placer(parallel: Any) -> Callable[[dict[str, np.ndarray]], dict[str, jax.Array]]:
  """The function that puts this host's batch where ``parallel``'s compiled step wants it.

  Mesh: :meth:`DataParallel.put_batch` (global arrays split over the mesh). ``pmap``: the
  (devices, per-device batch, ...) arrays of ``put_batch``, each device's slice copied to it now
  rather than when the step is called.
  """
  if parallel.mode != "pmap":
    return parallel.put_batch
  local = NamedSharding(Mesh(np.array(jax.local_devices()), ("devices",)), P("devices"))
  return lambda batch: jax.device_put(parallel.put_batch(batch), local)
