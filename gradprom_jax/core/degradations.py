"""Low-quality images simulated from high-quality ones, on device and seeded.

Every op takes and returns float32 NHWC images in [0, 1] and is jit-able, so a
degradation runs inside the train step on each fresh batch instead of being
baked into the data set. Outputs are clipped to [0, 1] because a real acquired
image is: bicubic overshoot and additive noise would otherwise leave the range.

A `Degradation` is a composition of ops built from a config string:

>>> import jax
>>> degrade = parse_degradation(
...     "blur(sigma=1.0) > downsample(scale=4) > gaussian_noise(sigma=0.02)")
>>> degrade.scale, degrade.spec
(4, 'gaussian_blur(sigma=1.0) > downsample(scale=4) > gaussian_noise(sigma=0.02)')
>>> degrade(jax.random.key(0), jax.numpy.zeros((2, 32, 32, 3))).shape
(2, 8, 8, 3)
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
from typing import Any, Callable

import dm_pix
import jax
import jax.numpy as jnp

# The enhancers' skip, also the no-enhancement reference: re-exported as degradations.upsample.
from gradprom_jax.models.resampling import check_scale, upsample  # noqa: F401


def downsample(images: jax.Array, scale: int) -> jax.Array:
  """Bicubic downsampling by an integer `scale`, antialiased, clipped to [0, 1].

  Antialiasing widens the cubic kernel by `scale` (as MATLAB's `imresize` and
  PIL do), which is how the super-resolution literature makes its LR inputs.
  Height and width are floored to multiples of `scale`'s output size.

  >>> downsample(jnp.full((1, 8, 8, 1), 0.3), 4)[0, :, :, 0]
  Array([[0.3, 0.3],
         [0.3, 0.3]], dtype=float32)
  """
  check_scale(scale)
  n, h, w, c = images.shape
  small = jax.image.resize(
      images, (n, h // scale, w // scale, c), method="bicubic", antialias=True)
  return jnp.clip(small, 0.0, 1.0)


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
  """Separable Gaussian blur with standard deviation `sigma` pixels.

  The kernel has 2 * ceil(3 sigma) + 1 taps (99.7% of the mass); borders are
  reflect-padded so an image edge does not darken as zero padding would.
  `sigma` must be a Python number: it fixes the kernel size, a static shape.
  The result is clipped only against float rounding (a blur is a convex
  combination of pixels).

  >>> blurred = gaussian_blur(jnp.full((1, 5, 5, 1), 0.5), 1.0)
  >>> blurred.shape, round(float(blurred.min()), 4), round(float(blurred.max()), 4)
  ((1, 5, 5, 1), 0.5, 0.5)
  """
  if not sigma > 0:
    raise ValueError(f"blur sigma must be positive, got {sigma!r}")
  radius = math.ceil(3 * sigma)
  padded = jnp.pad(
      images, ((0, 0), (radius, radius), (radius, radius), (0, 0)),
      mode="reflect")
  blurred = dm_pix.gaussian_blur(padded, sigma, 2 * radius + 1, padding="VALID")
  return jnp.clip(blurred, 0.0, 1.0)


def gaussian_noise(key: jax.Array, images: jax.Array,
                   sigma: float) -> jax.Array:
  """Additive white Gaussian noise of standard deviation `sigma`, clipped.

  >>> noisy = gaussian_noise(jax.random.key(0), jnp.full((1, 64, 64, 1), 0.5), 0.1)
  >>> round(float(noisy.std()), 2)
  0.1
  """
  noise = sigma * jax.random.normal(key, images.shape, images.dtype)
  return jnp.clip(images + noise, 0.0, 1.0)


def poisson_noise(key: jax.Array, images: jax.Array,
                  photons: float) -> jax.Array:
  """Poisson (shot) noise of a low-dose acquisition, clipped to [0, 1].

  A pixel of intensity x counts Poisson(x * photons) photons and is read back
  as counts / photons: fewer photons, more noise (variance x / photons).

  >>> noisy = poisson_noise(jax.random.key(0), jnp.full((1, 64, 64, 1), 0.5), 50.0)
  >>> round(float(noisy.var() * 50 / 0.5), 1)
  1.0
  """
  counts = jax.random.poisson(key, images * photons, images.shape)
  return jnp.clip(counts.astype(images.dtype) / photons, 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class _OpSpec:
  """How a config name maps to a function: its parameters and their types."""
  fn: Callable[..., jax.Array]
  params: dict[str, type]
  needs_key: bool


_OPS: dict[str, _OpSpec] = {
    "downsample": _OpSpec(downsample, {"scale": int}, needs_key=False),
    "gaussian_blur": _OpSpec(gaussian_blur, {"sigma": float}, needs_key=False),
    "gaussian_noise": _OpSpec(gaussian_noise, {"sigma": float}, needs_key=True),
    "poisson_noise": _OpSpec(poisson_noise, {"photons": float}, needs_key=True),
}
_ALIASES = {"blur": "gaussian_blur"}


@dataclasses.dataclass(frozen=True)
class Degradation:
  """A composition of degradation ops applied left to right.

  Frozen and hashable, so it can be a static argument of `jax.jit`. Each
  noisy op draws from its own split of the key.

  Attributes:
    ops: tuple of (op name, ((param, value), ...)) in application order;
      empty for the identity.

  >>> parse_degradation("downsample(scale=2) > poisson_noise(photons=100)").ops
  (('downsample', (('scale', 2),)), ('poisson_noise', (('photons', 100.0),)))
  """
  ops: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

  def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
    """Degrades NHWC float32 `images` in [0, 1]; `key` seeds the noise."""
    keys = jax.random.split(key, max(len(self.ops), 1))
    for op_key, (name, params) in zip(keys, self.ops):
      op = _OPS[name]
      if op.needs_key:
        images = op.fn(op_key, images, **dict(params))
      else:
        images = op.fn(images, **dict(params))
    return images

  @property
  def scale(self) -> int:
    """Total downsampling factor (1 when nothing downsamples)."""
    return math.prod(dict(params)["scale"] for name, params in self.ops
                     if name == "downsample")

  @property
  def spec(self) -> str:
    """Canonical config string; `parse_degradation(d.spec) == d`."""
    if not self.ops:
      return "none"
    return " > ".join(
        f"{name}({', '.join(f'{k}={v!r}' for k, v in params)})"
        for name, params in self.ops)

  def check_image_size(self, height: int, width: int) -> None:
    """Raises ValueError unless `scale` divides both `height` and `width`.

    >>> parse_degradation("downsample(scale=4)").check_image_size(30, 32)
    Traceback (most recent call last):
    ...
    ValueError: degradation 'downsample(scale=4)' has scale 4, which does not divide the image size 30x32
    """
    if height % self.scale or width % self.scale:
      raise ValueError(
          f"degradation {self.spec!r} has scale {self.scale}, which does not "
          f"divide the image size {height}x{width}")


_OP_PATTERN = re.compile(r"^(\w+)\s*(?:\((.*)\))?$")


def _parse_value(name: str, key: str, text: str, kind: type) -> Any:
  try:
    value = ast.literal_eval(text.strip())
  except (ValueError, SyntaxError):
    raise ValueError(f"{name}: {key}={text.strip()!r} is not a number") from None
  if kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
    raise ValueError(f"{name}: {key} must be an integer, got {value!r}")
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"{name}: {key} must be a positive number, got {value!r}")
  return kind(value)


def _parse_op(text: str) -> tuple[str, tuple[tuple[str, Any], ...]]:
  match = _OP_PATTERN.match(text.strip())
  valid = ", ".join(sorted([*_OPS, *_ALIASES]))
  if not match:
    raise ValueError(f"cannot parse degradation op {text.strip()!r}; "
                     f"expected name(param=value, ...) with name in: {valid}")
  name, args = match.group(1), match.group(2) or ""
  name = _ALIASES.get(name, name)
  if name not in _OPS:
    raise ValueError(f"unknown degradation op {match.group(1)!r}; valid: {valid}")
  expected = _OPS[name].params
  params = {}
  for item in filter(None, (a.strip() for a in args.split(","))):
    key, eq, value = item.partition("=")
    key = key.strip()
    if not eq or key not in expected:
      raise ValueError(f"unknown parameter {item!r} of {name}; "
                       f"valid: {', '.join(expected)}")
    params[key] = _parse_value(name, key, value, expected[key])
  missing = [k for k in expected if k not in params]
  if missing:
    raise ValueError(f"{name} needs parameter(s) {', '.join(missing)}")
  return name, tuple((k, params[k]) for k in expected)


def parse_degradation(spec: str) -> Degradation:
  """Builds a `Degradation` from a config string.

  Ops are separated by `>` and applied left to right, each written
  `name(param=value, ...)`: `downsample(scale=...)`, `gaussian_blur(sigma=...)`
  (alias `blur`), `gaussian_noise(sigma=...)`, `poisson_noise(photons=...)`.
  `"none"` or `""` is the identity.

  >>> parse_degradation("none").scale
  1
  >>> parse_degradation("jpeg(quality=10)")
  Traceback (most recent call last):
  ...
  ValueError: unknown degradation op 'jpeg'; valid: blur, downsample, gaussian_blur, gaussian_noise, poisson_noise
  """
  if spec.strip().lower() in ("", "none"):
    return Degradation()
  return Degradation(tuple(_parse_op(part) for part in spec.split(">")))
