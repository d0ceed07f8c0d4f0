"""Turning raw files into validated, resized TFDS examples; bad inputs become errors that name the file.

Every builder goes through `read_image` / `read_mask` / `encode_png`, so every builder rejects
corrupt files, mask/image size mismatches and unknown labels the same way.
"""
import dataclasses
import io
import logging
import os
import warnings
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
import tensorflow_datasets as tfds


class BadInputError(ValueError):
  """A raw file cannot become an example; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Record:
  """One raw example before decoding: where its image and mask are, and its label.

  `image` is a path, or an array already in memory (MedMNIST). `label` is a class name or an index.
  """
  key: str
  image: "os.PathLike | str | np.ndarray"
  mask: "os.PathLike | str | None" = None
  label: "str | int | None" = None


def make_features(image_shape: Sequence[int | None], *, has_mask: bool,
                  class_names: Sequence[str] | None) -> tfds.features.FeaturesDict:
  """The TFDS features every builder writes: PNG image, optional PNG mask and class label.

  >>> make_features((8, 8, 3), has_mask=True, class_names=["a", "b"]).keys()
  dict_keys(['image', 'mask', 'label'])
  """
  height, width, channels = image_shape
  features = {"image": tfds.features.Image(shape=(height, width, channels), encoding_format="png")}
  if has_mask:
    features["mask"] = tfds.features.Image(shape=(height, width, 1), encoding_format="png")
  if class_names is not None:
    features["label"] = tfds.features.ClassLabel(names=list(class_names))
  return tfds.features.FeaturesDict(features)


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 HxW or HxWxC array (TFDS without TensorFlow encodes bytes, not arrays).

  >>> encode_png(np.zeros((2, 3, 1), np.uint8))[:4]
  b'\\x89PNG'
  """
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array, np.uint8)).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


def _open(path) -> Image.Image:
  try:
    with warnings.catch_warnings():
      # A header claiming more than Image.MAX_IMAGE_PIXELS pixels is a decompression bomb (or a
      # file far larger than any image here): refuse it before decoding gigabytes.
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = Image.open(path)
      image.load()  # Truncated files only fail here, not at open().
  except FileNotFoundError as e:
    raise BadInputError(f"{path}: file not found") from e
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise BadInputError(f"{path}: image too large, possibly a decompression bomb ({e})") from e
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise BadInputError(f"{path}: corrupt or truncated image ({e})") from e
  return image


def _to_pil(image) -> Image.Image:
  if isinstance(image, np.ndarray):
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  return _open(image)


def read_image(image, *, image_size: Sequence[int] | None, num_channels: int) -> np.ndarray:
  """Decodes a path (or uint8 array) to uint8 HxWxC, resized to `image_size` (H, W) when given.

  >>> read_image(np.zeros((4, 4), np.uint8), image_size=(2, 3), num_channels=3).shape
  (2, 3, 3)
  """
  pil = _to_pil(image).convert("RGB" if num_channels == 3 else "L")
  if image_size is not None and pil.size != (image_size[1], image_size[0]):
    pil = pil.resize((image_size[1], image_size[0]), Image.Resampling.LANCZOS)
  array = np.asarray(pil, np.uint8)
  return array if array.ndim == 3 else array[..., None]


def read_mask(path, *, expected_size: tuple[int, int], image_size: Sequence[int] | None) -> np.ndarray:
  """Decodes a binary mask file (any non-black pixel is lesion; JPEG noise is thresholded) to uint8 HxWx1.

  `expected_size` is the (W, H) of the source image: a mask of another size is a bad input.
  """
  pil = _open(path)
  if pil.size != expected_size:
    raise BadInputError(f"{path}: mask size {pil.size} (W, H) differs from its image's {expected_size}")
  pil = pil.convert("L")
  if image_size is not None and pil.size != (image_size[1], image_size[0]):
    # Area-like resize of the 0/255 mask then threshold at half: smoother than nearest-neighbour.
    pil = pil.resize((image_size[1], image_size[0]), Image.Resampling.BILINEAR)
  return (np.asarray(pil) >= 128).astype(np.uint8)[..., None]


def source_size(image) -> tuple[int, int]:
  """(W, H) of an image path or array, read from the header only."""
  if isinstance(image, np.ndarray):
    return image.shape[1], image.shape[0]
  with _open(image) as pil:
    return pil.size


def encode_record(record: Record, *, image_size: Sequence[int] | None, num_channels: int,
                  class_names: Sequence[str] | None, has_mask: bool) -> dict:
  """Validates and encodes one `Record` into a TFDS example dict, or raises `BadInputError`."""
  image = read_image(record.image, image_size=image_size, num_channels=num_channels)
  example = {"image": encode_png(image)}
  if has_mask:
    if record.mask is None:
      raise BadInputError(f"{record.image}: no mask for image id {record.key!r}")
    example["mask"] = encode_png(read_mask(record.mask, expected_size=source_size(record.image),
                                           image_size=image_size))
  if class_names is not None:
    example["label"] = label_index(record, class_names)
  return example


def label_index(record: Record, class_names: Sequence[str]) -> int:
  """The class index of `record.label`; a missing or unknown label is a bad input naming the file."""
  label = record.label
  if label is None:
    raise BadInputError(f"{record.image}: image id {record.key!r} has no label")
  if isinstance(label, (int, np.integer)):
    if not 0 <= label < len(class_names):
      raise BadInputError(f"{record.image}: label {label} outside the {len(class_names)} classes {list(class_names)}")
    return int(label)
  if label not in class_names and label.isdigit():
    return label_index(dataclasses.replace(record, label=int(label)), class_names)  # "2" -> class 2.
  if label not in class_names:
    raise BadInputError(f"{record.image}: label {label!r} is not one of the classes {list(class_names)}")
  return list(class_names).index(label)


class BadInputLog:
  """Collects bad inputs: raises at once (`skip_bad=False`) or counts and reports them (`skip_bad=True`).

  >>> log = BadInputLog(skip_bad=True)
  >>> log.add(BadInputError("x.png: corrupt"))
  >>> log.messages
  ['x.png: corrupt']
  """

  def __init__(self, *, skip_bad: bool):
    self.skip_bad = skip_bad
    self.messages: list[str] = []

  def add(self, error: BadInputError) -> None:
    if not self.skip_bad:
      raise BadInputError(f"{error} (set data.skip_bad=True to skip bad inputs)") from error
    logging.warning("Skipping bad input: %s", error)
    self.messages.append(str(error))

  def encode_all(self, records: Iterable[Record], **encode_kwargs) -> Iterator[tuple[str, dict]]:
    """Yields (key, example) for every record that encodes; bad ones go through `add`."""
    for record in records:
      try:
        yield record.key, encode_record(record, **encode_kwargs)
      except BadInputError as e:
        self.add(e)
