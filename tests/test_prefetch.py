"""gradprom_jax.training.prefetch: batches placed ahead on the mesh and under pmap, and an exact resume."""
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.data import make_train_loader
from gradprom_jax.training.checkpointing import Checkpointer
from gradprom_jax.training.parallel import DataParallel
from gradprom_jax.training.prefetch import DevicePrefetcher, device_placer

GLOBAL_BATCH = 4   # divisible by the 4 simulated CPU devices of conftest.py


def _dataset(num_examples=10):
  """A stand-in for a built dataset: each image holds its own index, so batches are identifiable."""
  examples = [{"image": np.full((4, 4, 1), i, np.uint8), "label": i % 2} for i in range(num_examples)]
  return types.SimpleNamespace(sources={"train": examples})


def _loader_iterator(num_workers=0):
  return iter(make_train_loader(_dataset(), global_batch_size=GLOBAL_BATCH, seed=0,
                                process_index=0, process_count=1, num_workers=num_workers))


def _ids(batch) -> list[int]:
  image = np.asarray(jax.device_get(batch["image"]))
  return [int(v) for v in image.reshape(-1, 16)[:, 0]]


@pytest.mark.parametrize("mode", ["mesh", "pmap"])
def test_prefetched_batches_are_the_loaders_placed_for_the_step(mode):
  parallel = DataParallel(mode)
  expected = [_ids(next(iter_)) for iter_ in [_loader_iterator()] for _ in range(5)]
  batches = DevicePrefetcher(_loader_iterator(), device_placer(parallel), size=2)
  got = [next(batches) for _ in range(5)]
  assert [_ids(b) for b in got] == expected
  image = got[0]["image"]
  assert isinstance(image, jax.Array) and len(image.sharding.device_set) == jax.local_device_count()
  if mode == "pmap":   # (devices, per-device batch, ...), each device holding its own slice.
    assert image.shape[:2] == (jax.local_device_count(), GLOBAL_BATCH // jax.local_device_count())
    summed = jax.pmap(lambda x: x.sum())(image)
    np.testing.assert_allclose(summed, np.asarray(image).reshape(image.shape[0], -1).sum(1))
  else:
    assert image.shape[0] == GLOBAL_BATCH and image.sharding == parallel.data_sharding


def test_zero_prefetch_reads_only_what_it_hands_out():
  iterator = _loader_iterator()
  batches = DevicePrefetcher(iterator, jax.device_put, size=0)
  next(batches)
  assert batches.get_state() == DevicePrefetcher(iterator, jax.device_put).get_state()
  with pytest.raises(ValueError, match="prefetch size must be >= 0"):
    DevicePrefetcher(iterator, jax.device_put, size=-1)


def test_checkpointed_position_is_the_last_consumed_batch(tmp_path):
  # Four batches consumed with three more already on the devices; a checkpoint, then a "killed"
  # run resumed in a fresh prefetcher sees exactly the batches the first run would have seen next.
  parallel = DataParallel("mesh")
  batches = DevicePrefetcher(_loader_iterator(), device_placer(parallel), size=3)
  for _ in range(4):
    next(batches)
  checkpointer = Checkpointer(tmp_path / "checkpoints", save_interval_steps=1)
  state = {"step": jnp.int32(4)}
  assert checkpointer.save(4, state, batches, force=True)
  checkpointer.wait_until_finished()
  continued = [_ids(next(batches)) for _ in range(3)]

  resumed = DevicePrefetcher(_loader_iterator(), device_placer(parallel), size=3)
  restored, step = checkpointer.restore_latest(state, resumed)
  assert step == 4
  assert [_ids(next(resumed)) for _ in range(3)] == continued
  # And a checkpoint made without prefetching restores into a prefetcher, and vice versa.
  plain = _loader_iterator()
  plain.set_state(json.loads(resumed.get_state()))
  assert _ids(next(plain)) == _ids(next(resumed))
  checkpointer.close()
