"""`synthetic_lesions`: the embedded default dataset, dermoscopy-like images generated from a seed.

Each image shows skin (tone, low-frequency texture, hairs, vignetting) and one pigmented lesion
with its binary mask. The diagnosis counts three *fine* atypia features, each built at the scale
of a few pixels and balanced to average out, so x4 downsampling plus noise erases it while the
coarse look (size, shape, colour, position) carries no label information:

- irregular border: ripples of ~6 px period and 1-2 px amplitude on a smooth outline;
- colour variegation: 1-px blue/red and dark/light speckle, balanced within every 4x4 tile;
- atypical pigment network: a warped dark mesh of 3.5-5 px period, zero-mean over the lesion.

Labels: 0 common nevus (no feature), 1 atypical nevus (one), 2 melanoma (two or three).
"""
import dataclasses

import numpy as np
from PIL import Image, ImageDraw
import tensorflow_datasets as tfds

from gradprom_jax.data import dataset_spec
from gradprom_jax.data import examples
from gradprom_jax.data import records_builder

CLASS_NAMES = ("common_nevus", "atypical_nevus", "melanoma")
FEATURES = ("irregular_border", "colour_variegation", "atypical_network")


def atypia_features(label: int, rng: np.random.Generator) -> np.ndarray:
  """Which fine features a lesion of class `label` shows: none, one, or two-three of them.

  >>> atypia_features(1, np.random.default_rng(0)).sum()
  np.int64(1)
  """
  count = (0, 1, rng.integers(2, 4))[label]
  flags = np.zeros(len(FEATURES), bool)
  flags[rng.permutation(len(FEATURES))[:count]] = True
  return flags


def _low_frequency(rng, yy, xx, wavelength, amplitude, waves=3):
  """A sum of random plane waves: smooth texture or warp fields."""
  field = np.zeros_like(yy)
  for _ in range(waves):
    angle, phase = rng.uniform(0, 2 * np.pi, 2)
    k = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.3))
    field += np.cos(k * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
  return amplitude * field / waves


def _tile_balanced_speckle(rng, height, width, tile=4):
  """±1 per pixel, half of each tile x tile block each sign: area downsampling by `tile` cancels it."""
  th, tw = -(-height // tile), -(-width // tile)
  signs = np.where(rng.random((th, tw, tile * tile)).argsort(-1) < tile * tile // 2, 1.0, -1.0)
  signs = signs.reshape(th, tw, tile, tile).transpose(0, 2, 1, 3).reshape(th * tile, tw * tile)
  return signs[:height, :width].astype(np.float32)


def _hairs(rng, height, width) -> np.ndarray:
  """0-4 thin dark curved hairs as a float mask in [0, 1]."""
  canvas = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(canvas)
  for _ in range(rng.integers(0, 5)):
    p0, p1, p2 = rng.uniform(-0.2, 1.2, (3, 2)) * (width, height)
    t = np.linspace(0, 1, 64)[:, None]
    curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
    draw.line([tuple(p) for p in curve], fill=int(rng.integers(150, 256)), width=int(rng.integers(1, 3)))
  return np.asarray(canvas, np.float32) / 255


def generate_lesion(rng: np.random.Generator, height: int, width: int, label: int):
  """One synthetic dermoscopy image (uint8 HxWx3) and its lesion mask (uint8 HxW, 1 = lesion).

  >>> image, mask = generate_lesion(np.random.default_rng(0), 48, 64, label=2)
  >>> image.shape, image.dtype, mask.shape, sorted(np.unique(mask).tolist())
  ((48, 64, 3), dtype('uint8'), (48, 64), [0, 1])
  """
  flags = dict(zip(FEATURES, atypia_features(label, rng)))
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  size = min(height, width)

  # Skin: tone, low-frequency texture, vignetting.
  tone = rng.uniform(0, 1)
  skin = (1 - tone) * np.array([0.93, 0.78, 0.70]) + tone * np.array([0.76, 0.56, 0.44])
  texture = _low_frequency(rng, yy, xx, wavelength=size / 3, amplitude=0.04)
  radius_from_centre = np.hypot((yy - height / 2) / (height / 2), (xx - width / 2) / (width / 2)) / np.sqrt(2)
  vignette = 1 - rng.uniform(0.15, 0.45) * radius_from_centre ** 2
  image = (skin[None, None] + texture[..., None]) * vignette[..., None]

  # Lesion outline: a smooth, randomly stretched blob; atypia adds fine ripples of a few pixels.
  cy, cx = np.array([height, width]) * (0.5 + rng.uniform(-0.08, 0.08, 2))
  stretch, rotation = rng.uniform(0.8, 1.25), rng.uniform(0, np.pi)
  dy, dx = yy - cy, xx - cx
  u = (np.cos(rotation) * dx + np.sin(rotation) * dy) * stretch
  v = (-np.sin(rotation) * dx + np.cos(rotation) * dy) / stretch
  dist, theta = np.hypot(u, v), np.arctan2(v, u)
  base_radius = rng.uniform(0.2, 0.32) * size
  radius = base_radius * (1 + sum(rng.uniform(0, 0.07) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                                  for k in (2, 3, 4)))
  if flags["irregular_border"]:
    ripples = max(3, int(2 * np.pi * base_radius / 6))  # ~6 px period along the outline.
    for k in rng.integers(ripples // 2, ripples + 1, 3):
      radius = radius + rng.uniform(1.0, 2.0) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
  mask = dist < radius
  # Soft edge of random width, so border blur alone says nothing about the label.
  alpha = np.clip((radius - dist) / rng.uniform(0.7, 2.5) + 0.5, 0, 1)[..., None]

  # Lesion colour: one brown, darker towards the centre.
  shade = rng.uniform(0, 1)
  brown = (1 - shade) * np.array([0.62, 0.42, 0.28]) + shade * np.array([0.36, 0.21, 0.13])
  centre_dark = 1 - 0.15 * np.clip(1 - dist / radius, 0, 1)
  lesion = brown[None, None] * centre_dark[..., None]
  if flags["colour_variegation"]:
    # Blue-grey vs red speckle plus dark vs light speckle: up to five colours, same local mean.
    amplitude = rng.uniform(0.10, 0.16)
    lesion = lesion + amplitude * _tile_balanced_speckle(rng, height, width)[..., None] * np.array([-0.8, 0.1, 1.0])
    lesion = lesion + amplitude * _tile_balanced_speckle(rng, height, width)[..., None] * np.array([0.7, 0.6, 0.5])
  if flags["atypical_network"]:
    period, thickness = rng.uniform(3.5, 5.0), rng.uniform(0.35, 0.55)
    angle = rng.uniform(0, np.pi)
    warp_u, warp_v = (_low_frequency(rng, yy, xx, wavelength=size / 4, amplitude=2.0) for _ in range(2))
    a = np.cos(angle) * xx + np.sin(angle) * yy + warp_u
    b = -np.sin(angle) * xx + np.cos(angle) * yy + warp_v
    lines = ((np.abs(np.sin(np.pi * a / period)) < thickness) |
             (np.abs(np.sin(np.pi * b / period)) < thickness)).astype(np.float32)
    lines -= lines[mask].mean() if mask.any() else 0  # Zero-mean: the mesh does not darken the lesion.
    lesion = lesion - rng.uniform(0.5, 0.8) * lines[..., None] * brown[None, None] * 0.6

  image = image * (1 - alpha) + lesion * alpha
  hair = _hairs(rng, height, width)[..., None]
  image = image * (1 - hair) + hair * np.array([0.12, 0.08, 0.06])
  return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), mask.astype(np.uint8)


def generate_split(seed: int, split: str, count: int, height: int, width: int):
  """Yields (key, image, mask, label) for one split; each example has its own seeded generator."""
  split_id = ("train", "validation", "test").index(split)
  for index in range(count):
    rng = np.random.default_rng([seed, split_id, index])
    label = int(rng.integers(len(CLASS_NAMES)))
    image, mask = generate_lesion(rng, height, width, label)
    yield f"{split}_{index:06d}", image, mask, label


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """Size, counts and seed of a synthetic build; the name is derived from them."""
  image_size: tuple[int, int] = (192, 256)
  num_train: int = 400
  num_validation: int = 100
  num_test: int = 100
  seed: int = 0


class SyntheticLesions(tfds.core.GeneratorBasedBuilder):
  """Synthetic dermoscopy lesions whose diagnosis depends on fine detail (no download)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = []

  def _info(self) -> tfds.core.DatasetInfo:
    height, width = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__.strip().splitlines()[0],
        features=examples.make_features((height, width, 3), has_mask=True, class_names=CLASS_NAMES))

  def _split_generators(self, dl_manager):
    config = self.builder_config
    counts = {"train": config.num_train, "validation": config.num_validation, "test": config.num_test}
    return {split: self._generate_examples(split, count) for split, count in counts.items()}

  def _generate_examples(self, split: str, count: int):
    height, width = self.builder_config.image_size
    for key, image, mask, label in generate_split(self.builder_config.seed, split, count, height, width):
      yield key, {"image": examples.encode_png(image), "mask": examples.encode_png(mask), "label": label}


def add_config_keys(config) -> None:
  """The synthetic dataset's keys under ``config.data``."""
  # synthetic_lesions: number of examples per split and the generator seed.
  config.num_train = 400
  config.num_validation = 100
  config.num_test = 100
  config.synthetic_seed = 0


def check_config(config) -> None:
  """Every split needs at least one example.

  >>> import ml_collections
  >>> check_config(ml_collections.ConfigDict(dict(num_train=4, num_validation=0, num_test=2)))
  Traceback (most recent call last):
  ...
  ValueError: data.num_validation must be positive, got 0
  """
  for split in ("num_train", "num_validation", "num_test"):
    if config[split] <= 0:
      raise ValueError(f"data.{split} must be positive, got {config[split]}")


def make_builder(config, data_dir: str) -> SyntheticLesions:
  """The builder for a data config's synthetic keys (image_size, num_* counts, synthetic_seed)."""
  fields = dict(image_size=tuple(config.image_size), num_train=config.num_train,
                num_validation=config.num_validation, num_test=config.num_test, seed=config.synthetic_seed)
  builder_config = SyntheticConfig(name=records_builder.config_name(**fields), **fields)
  return SyntheticLesions(config=builder_config, data_dir=data_dir, file_format="array_record")


DATASET = dataset_spec.DatasetSpec(
    name="synthetic_lesions", make_builder=make_builder, add_config_keys=add_config_keys,
    check_config=check_config,
    smoke_test_keys=dict(image_size=(32, 32), num_train=12, num_validation=4, num_test=4))
