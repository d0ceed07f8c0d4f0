"""grain loaders: batch shapes, determinism, resumable state, per-host shards, padded evaluation."""
import dataclasses
import threading
import time

import numpy as np
import pytest

from gradprom_jax.data import default_data_config, load_dataset, make_eval_loader, make_train_loader
from gradprom_jax.data.pipeline import DEFAULT_READ_BUFFER, to_arrays


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  config = default_data_config()
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.image_size, config.num_train, config.num_validation, config.num_test = (32, 32), 12, 5, 3
  return load_dataset(config)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_batches_follow_the_conventions(dataset):
  batch = next(iter(make_train_loader(dataset, global_batch_size=4, seed=0, patch_size=(16, 24))))
  # uint8 up to the device; the compiled programs make it float32 in [0, 1] (test_image_dtype.py).
  assert batch["image"].shape == (4, 16, 24, 3) and batch["image"].dtype == np.uint8
  # Masks too (class ids, 4x fewer bytes than int32); the compiled programs make them int32.
  assert batch["mask"].shape == (4, 16, 24) and batch["mask"].dtype == np.uint8
  assert set(np.unique(batch["mask"])) <= {0, 1}
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
  eval_batch = next(iter(make_eval_loader(dataset, "validation", global_batch_size=4)))
  assert eval_batch["mask"].dtype == np.uint8


def test_masks_with_class_ids_beyond_uint8_are_refused():
  image = np.zeros((2, 2, 3), np.uint8)
  assert to_arrays({"image": image, "mask": np.full((2, 2, 1), 255, np.int32)})["mask"].max() == 255
  with pytest.raises(ValueError, match=r"mask class ids must lie in \[0, 255\].*\[0, 300\]"):
    to_arrays({"image": image, "mask": np.array([[[0], [300]], [[1], [2]]], np.int32)})
  with pytest.raises(ValueError, match=r"\[0, 255\]"):
    to_arrays({"image": image, "mask": np.full((2, 2, 1), -1, np.int64)})


class _CountingSource:
  """A split that counts how many examples were read from it."""

  def __init__(self, source):
    self.source, self.reads, self.lock = source, 0, threading.Lock()

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    with self.lock:
      self.reads += 1
    return self.source[index]


@pytest.mark.parametrize("read_buffer", [None, 1, 3])
def test_the_train_loader_reads_only_its_buffer_ahead(dataset, read_buffer):
  """grain's own default reads 500 batches ahead (gigabytes at ISIC size); the loader keeps a few."""
  counting = _CountingSource(dataset.sources["train"])
  counted = dataclasses.replace(dataset, sources={**dataset.sources, "train": counting})
  options = {} if read_buffer is None else {"read_buffer": read_buffer}
  iterator = iter(make_train_loader(counted, global_batch_size=4, seed=0, **options))
  next(iterator)
  time.sleep(0.5)   # the reading threads fill the buffer in the background
  buffered = read_buffer or DEFAULT_READ_BUFFER
  assert DEFAULT_READ_BUFFER <= 8
  # The batch consumed, the buffer and at most one more batch being assembled.
  assert 4 * (1 + buffered) <= counting.reads <= 4 * (2 + buffered)
  with pytest.raises(ValueError, match="read_buffer must be at least 1"):
    make_train_loader(dataset, global_batch_size=4, seed=0, read_buffer=0)


def test_train_stream_is_deterministic_and_seed_dependent(dataset):
  a = take(iter(make_train_loader(dataset, global_batch_size=4, seed=1, patch_size=(16, 16))), 5)
  b = take(iter(make_train_loader(dataset, global_batch_size=4, seed=1, patch_size=(16, 16))), 5)
  c = take(iter(make_train_loader(dataset, global_batch_size=4, seed=2, patch_size=(16, 16))), 5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_epochs_cover_every_example_in_a_new_order(dataset):
  # Labels carry no identity; use the full un-augmented images as fingerprints.
  loader = make_train_loader(dataset, global_batch_size=4, seed=0, augment=False)
  batches = take(iter(loader), 6)  # 2 epochs of 12.
  epoch1 = [img.tobytes() for b in batches[:3] for img in b["image"]]
  epoch2 = [img.tobytes() for b in batches[3:] for img in b["image"]]
  assert len(set(epoch1)) == 12 and set(epoch1) == set(epoch2)
  assert epoch1 != epoch2


def test_crop_and_flip_keep_mask_aligned_with_image(dataset):
  # The synthetic lesion is darker than the skin: mean brightness inside the mask must stay lower.
  for batch in take(iter(make_train_loader(dataset, global_batch_size=4, seed=3, patch_size=(24, 24))), 3):
    for image, mask in zip(batch["image"], batch["mask"]):
      if 0 < mask.mean() < 1:
        assert image[mask == 1].mean() < image[mask == 0].mean()


def test_restored_iterator_yields_exactly_the_batches_that_would_have_followed(dataset):
  iterator = iter(make_train_loader(dataset, global_batch_size=4, seed=0, patch_size=(16, 16)))
  take(iterator, 4)
  state = iterator.get_state()
  expected = take(iterator, 5)
  fresh = iter(make_train_loader(dataset, global_batch_size=4, seed=0, patch_size=(16, 16)))
  fresh.set_state(state)
  for want, got in zip(expected, take(fresh, 5)):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def test_each_process_reads_a_disjoint_shard_of_half_the_batch(dataset):
  seen = []
  for process_index in range(2):
    loader = make_train_loader(dataset, global_batch_size=4, seed=0, augment=False,
                               process_index=process_index, process_count=2)
    batches = take(iter(loader), 3)  # One epoch of the 6-example shard.
    assert batches[0]["image"].shape[0] == 2
    seen.append({img.tobytes() for b in batches for img in b["image"]})
  assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]


def test_bad_batch_layout_is_rejected(dataset):
  with pytest.raises(ValueError, match="multiple of process_count 3"):
    make_train_loader(dataset, global_batch_size=4, seed=0, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="larger than the images"):
    next(iter(make_train_loader(dataset, global_batch_size=4, seed=0, patch_size=(64, 64))))


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_loader_covers_the_split_once_with_padding(dataset, process_count):
  split = dataset.sources["validation"]  # 5 examples, global batch 4 -> 2 batches, 3 padded slots.
  images = []
  for process_index in range(process_count):
    batches = list(make_eval_loader(dataset, "validation", global_batch_size=4,
                                    process_index=process_index, process_count=process_count))
    assert len(batches) == 2
    for batch in batches:
      assert batch["image"].shape == (4 // process_count, 32, 32, 3) and batch["valid"].dtype == bool
      images += [img.tobytes() for img in batch["image"][batch["valid"]]]
  expected = {np.asarray(split[i]["image"], np.uint8).tobytes() for i in range(len(split))}
  assert len(images) == 5 and set(images) == expected


@pytest.mark.parametrize("process_count", [2, 4])
def test_global_batches_do_not_depend_on_the_process_count(dataset, process_count):
  """What makes 2 hosts x 2 devices train exactly like 1 host x 4 devices."""
  single = take(iter(make_train_loader(dataset, global_batch_size=4, seed=3, patch_size=(16, 16))), 4)
  shards = [take(iter(make_train_loader(dataset, global_batch_size=4, seed=3, patch_size=(16, 16),
                                        process_index=p, process_count=process_count)), 4)
            for p in range(process_count)]
  for step, batch in enumerate(single):
    for key in ("image", "mask", "label"):
      np.testing.assert_array_equal(np.concatenate([s[step][key] for s in shards]), batch[key])
  single_eval = list(make_eval_loader(dataset, "validation", global_batch_size=4))
  shard_eval = [list(make_eval_loader(dataset, "validation", global_batch_size=4, process_index=p,
                                      process_count=process_count)) for p in range(process_count)]
  for step, batch in enumerate(single_eval):
    for key in ("image", "valid"):
      np.testing.assert_array_equal(np.concatenate([s[step][key] for s in shard_eval]), batch[key])
