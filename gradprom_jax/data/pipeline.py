"""grain input pipelines: shuffled, augmented, endless training batches and padded evaluation batches.

The global batch is the same whatever the number of processes: every process computes the same
shuffled order of the whole source, global batch k is the examples at stream positions
[k·G, (k+1)·G), and process p reads (and decodes) only its contiguous slice [k·G + p·B, k·G + (p+1)·B)
of it (B = G / process_count). Every random choice (order, flips, crops) is derived from the seed and
the global stream position, so one process with 4 devices and 2 processes with 2 devices each see
the same batches, and the iterator state (`get_state` / `set_state`) resumes exactly where it left off.

Every example carries its id (:data:`EXAMPLE_ID`, int32), the integer its degradation noise is keyed
by: in training its position in its global batch (the step already keys the batch), in evaluation
its record index in the split. It travels with the example, so it stays the same whichever row of
which device the example lands on, for any number of hosts and devices and any device order.
"""
import sys
from typing import Any, Sequence

import grain
import jax
import numpy as np
from absl import flags

from gradprom_jax.data.registry import Dataset

# The per-example id field of every batch (see the module docstring).
EXAMPLE_ID = "example_id"
# Training batches grain reads ahead of the one being consumed, per process (its default is 500).
DEFAULT_READ_BUFFER = 4
# grain's default number of reading threads; never more than the buffer can keep busy.
_MAX_READ_THREADS = 16


def _process_layout(global_batch_size: int, process_index: int | None, process_count: int | None):
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside [0, process_count={process_count})")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                     f"process_count {process_count}")
  return process_index, process_count, global_batch_size // process_count


def to_arrays(example: dict[str, Any]) -> dict[str, np.ndarray]:
  """A decoded TFDS example -> the shared conventions: uint8 image, uint8 mask (H, W), int32 label.

  Images and masks stay uint8 until the device (4× fewer bytes on the host than float32 or int32);
  the compiled programs make images float32 in [0, 1] and masks int32
  (:mod:`gradprom_jax.core.image_dtype`). A mask with class ids outside [0, 255] is refused.

  >>> out = to_arrays({"image": np.full((2, 2, 3), 255, np.uint8), "mask": np.ones((2, 2, 1), np.uint8)})
  >>> out["image"].dtype, out["mask"].shape, out["mask"].dtype
  (dtype('uint8'), (2, 2), dtype('uint8'))
  """
  out = {"image": np.asarray(example["image"], np.uint8)}
  if "mask" in example:
    out["mask"] = _uint8_mask(np.asarray(example["mask"])[..., 0])
  if "label" in example:
    out["label"] = np.int32(example["label"])
  return out


def _uint8_mask(mask: np.ndarray) -> np.ndarray:
  if mask.dtype != np.uint8 and mask.size and (mask.min() < 0 or mask.max() > 255):
    raise ValueError(f"mask class ids must lie in [0, 255] to travel as uint8; got ids in "
                     f"[{mask.min()}, {mask.max()}]")
  return mask.astype(np.uint8)


def random_flip_and_crop(example: dict[str, np.ndarray], rng: np.random.Generator, *,
                         patch_size: Sequence[int] | None, flip: bool = True) -> dict[str, np.ndarray]:
  """Random horizontal/vertical flips (unless `flip=False`) and a random `patch_size` crop, applied identically to the mask.

  >>> ex = {"image": np.zeros((8, 8, 3), np.uint8), "mask": np.zeros((8, 8), np.int32)}
  >>> out = random_flip_and_crop(ex, np.random.default_rng(0), patch_size=(4, 6))
  >>> out["image"].shape, out["mask"].shape
  ((4, 6, 3), (4, 6))
  """
  height, width = example["image"].shape[:2]
  crop_h, crop_w = (height, width) if patch_size is None else patch_size
  if crop_h > height or crop_w > width:
    raise ValueError(f"patch_size {tuple(patch_size)} larger than the images ({height}, {width})")
  top = rng.integers(0, height - crop_h + 1)
  left = rng.integers(0, width - crop_w + 1)
  flip_h, flip_v = rng.integers(0, 2, size=2) * flip
  out = dict(example)
  for key in ("image", "mask"):
    if key in out:
      x = out[key][top:top + crop_h, left:left + crop_w]
      x = x[:, ::-1] if flip_h else x
      x = x[::-1] if flip_v else x
      out[key] = np.ascontiguousarray(x)
  return out


def make_train_loader(dataset: Dataset, *, global_batch_size: int, seed: int,
                      patch_size: Sequence[int] | None = None, augment: bool = True,
                      process_index: int | None = None, process_count: int | None = None,
                      num_workers: int = 0, read_buffer: int = DEFAULT_READ_BUFFER,
                      split: str = "train") -> grain.IterDataset:
  """Endless training batches for this process: shuffled each epoch, flipped and cropped, deterministic.

  Iterate it (`it = iter(loader)`); `it.get_state()` / `it.set_state(state)` checkpoint the position.
  Yields `{"image": uint8 (B, h, w, C), "mask"?: uint8 (B, h, w), "label"?: int32 (B,),
  "example_id": int32 (B,)}` with B = global_batch_size // process_count, (h, w) = patch_size or the
  image size, and each example's id its position in its global batch.

  `read_buffer` batches are read ahead per process (per worker with `num_workers`): the host memory
  the loader holds, and the most reading threads that can work at once.
  """
  if read_buffer < 1:
    raise ValueError(f"read_buffer must be at least 1 batch, got {read_buffer}")
  process_index, process_count, batch_size = _process_layout(global_batch_size, process_index, process_count)
  source = dataset.sources[split]
  if len(source) < global_batch_size:
    raise ValueError(f"{split} split has {len(source)} examples, fewer than the global batch size "
                     f"{global_batch_size}")
  order = grain.MapDataset.range(len(source)).seed(seed).shuffle().repeat()

  def stream_position(local_index: int) -> int:
    batch, offset = divmod(local_index, batch_size)
    return batch * global_batch_size + process_index * batch_size + offset

  def load(local_index: int) -> dict[str, np.ndarray]:
    position = stream_position(local_index)
    example = to_arrays(source[order[position]])
    if augment or patch_size is not None:  # augment=False still crops to patch_size, without flips.
      rng = np.random.default_rng([seed, position])
      example = random_flip_and_crop(example, rng, patch_size=patch_size, flip=augment)
    return {**example, EXAMPLE_ID: np.int32(position % global_batch_size)}

  ds = grain.MapDataset.range(0, sys.maxsize).map(load).batch(batch_size, drop_remainder=True)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=min(_MAX_READ_THREADS, read_buffer),
                                            prefetch_buffer_size=read_buffer))
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags; a plain script parsed none.
      flags.FLAGS.mark_as_parsed()
    return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return ds


def make_eval_loader(dataset: Dataset, split: str, *, global_batch_size: int,
                     process_index: int | None = None, process_count: int | None = None) -> grain.MapDataset:
  """One pass over `split` in fixed-shape batches; the padded tail is flagged by `"valid"` (B,) bool.

  Global batch k holds examples k·G … (k+1)·G - 1 in source order, whatever the process count;
  `"example_id"` (B,) int32 is each example's index in the split (padding continues the count).

  Every process yields the same number of batches (padding included), so collective ops stay in step.

  >>> import tempfile
  >>> from gradprom_jax.data import default_data_config, load_dataset
  >>> config = default_data_config()
  >>> config.data_dir = tempfile.mkdtemp()
  >>> config.image_size, config.num_train, config.num_validation, config.num_test = (16, 16), 4, 3, 2
  >>> batches = list(make_eval_loader(load_dataset(config), "validation", global_batch_size=2))
  >>> [b["valid"].tolist() for b in batches]
  [[True, True], [True, False]]
  """
  process_index, process_count, batch_size = _process_layout(global_batch_size, process_index, process_count)
  source = dataset.sources[split]
  num_examples = len(source)
  padded = -(-num_examples // global_batch_size) * global_batch_size
  padding = None

  def load(index: int) -> dict[str, np.ndarray]:
    nonlocal padding
    if index < num_examples:
      example, valid = to_arrays(source[index]), True
    else:
      if padding is None:  # Zeros shaped like a real example, so every batch has one shape.
        padding = {k: np.zeros_like(v) for k, v in to_arrays(source[0]).items()}
      example, valid = padding, False
    return {**example, "valid": np.bool_(valid), EXAMPLE_ID: np.int32(index)}

  # Global batch k holds examples [k·G, (k+1)·G); this process reads its contiguous slice of each.
  local = grain.MapDataset.range(padded // process_count).map(
      lambda j: (j // batch_size) * global_batch_size + process_index * batch_size + j % batch_size)
  return local.map(load).batch(batch_size)
