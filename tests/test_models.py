"""Tests of gradprom_jax.models: shapes/dtypes, identity at init, clipping, overfitting."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradprom_jax.core import degradations
from gradprom_jax.models import (EDSR, ResNetClassifier, UNetEnhancer, UNetSegmenter,
                                 create_enhancer, create_recognizer)

# rbg keys compile several times faster than threefry on CPU (parameter init dominates
# these tests' run time); no test depends on the random stream itself.
KEY = jax.random.key(0, impl="rbg")


def _abstract_apply(model, x, train):
  """Output and variables of `model` on `x`, traced only (no compilation): fast shape checks."""
  variables = jax.eval_shape(model.init, KEY, x)
  return jax.eval_shape(functools.partial(model.apply, train=train), variables, x), variables


@pytest.mark.parametrize("name", ["unet", "edsr"])
@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("train", [False, True])
def test_enhancer_shapes_and_dtypes(name, scale, channels, train):
  model = create_enhancer(name, channels=channels, scale=scale, features=8)
  x = jnp.zeros((2, 7, 9, channels), jnp.float32)
  out, variables = _abstract_apply(model, x, train)
  assert out.shape == (2, 7 * scale, 9 * scale, channels)
  assert out.dtype == jnp.float32
  assert set(variables) == {"params"}  # No BatchNorm statistics anywhere.


def test_unet_enhancer_same_size():
  out, _ = _abstract_apply(UNetEnhancer(channels=1, features=8), jnp.zeros((3, 28, 28, 1)), False)
  assert out.shape == (3, 28, 28, 1)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("stage_sizes", [(1, 1), (2, 2, 2, 2)])
def test_classifier_shapes_and_dtypes(channels, stage_sizes):
  model = ResNetClassifier(num_classes=3, stage_sizes=stage_sizes, features=8)
  # At the high-resolution size: the enhancer's x2 / x4 output of 7x7 and 48x64 PH2 images.
  for size in ((28, 28), (192, 256)):
    out, variables = _abstract_apply(model, jnp.zeros((2, *size, channels)), False)
    assert out.shape == (2, 3) and out.dtype == jnp.float32
    assert set(variables) == {"params"}


@pytest.mark.parametrize("num_classes", [1, 2, 3])
@pytest.mark.parametrize("channels", [1, 3])
def test_segmenter_shapes_and_dtypes(num_classes, channels):
  model = UNetSegmenter(num_classes=num_classes, features=8, num_levels=3)
  for size in ((28, 28), (30, 22), (192, 256)):
    out, _ = _abstract_apply(model, jnp.zeros((2, *size, channels)), True)
    assert out.shape == (2, *size, num_classes) and out.dtype == jnp.float32


@pytest.mark.parametrize("model", [
    UNetEnhancer(channels=3, scale=2, features=4, num_levels=2),
    EDSR(channels=3, scale=2, features=8, num_blocks=1),
])
def test_enhancer_starts_as_bicubic_and_clips_only_in_evaluation(model):
  x = jax.random.uniform(KEY, (2, 6, 6, 3))

  @jax.jit  # One compilation for the whole check.
  def outputs(x):
    params = model.init(KEY, x)
    # Large random weights push outputs out of range.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(KEY, len(leaves))
    wild = jax.tree.unflatten(treedef, [3 * jax.random.normal(k, leaf.shape)
                                        for k, leaf in zip(keys, leaves)])
    return (model.apply(params, x), model.apply(wild, x, train=True),
            model.apply(wild, x, train=False))

  initial, raw, clipped = outputs(x)
  # Zero-initialised output layer: the untrained enhancer is the no-enhancement reference.
  np.testing.assert_allclose(initial, degradations.upsample(x, 2), atol=1e-6)
  # Clipped in evaluation, raw in training.
  assert float(raw.min()) < 0.0 or float(raw.max()) > 1.0
  np.testing.assert_allclose(clipped, jnp.clip(raw, 0.0, 1.0))


def test_classifier_examples_are_independent():
  # GroupNorm normalises per example: one image's logits do not depend on its batch mates.
  model = ResNetClassifier(num_classes=2, stage_sizes=(1, 1), features=4)
  x = jax.random.uniform(KEY, (4, 16, 16, 1))

  @jax.jit
  def logits(x):
    params = model.init(KEY, x)
    return model.apply(params, x), model.apply(params, x.at[1:].set(0.0))

  together, alone = logits(x)
  np.testing.assert_allclose(alone[0], together[0], rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(together[0] - together[1]).max()) > 0  # Not a constant function.


def test_channel_mismatch_and_bad_scale_raise():
  with pytest.raises(ValueError, match="channels=3.*1 channels"):
    UNetEnhancer(channels=3).init(KEY, jnp.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="power of two, got 5"):
    EDSR(channels=1, scale=5).init(KEY, jnp.zeros((1, 8, 8, 1)))


def test_factories_reject_unknown_names():
  assert isinstance(create_recognizer("resnet", num_classes=2), ResNetClassifier)
  assert isinstance(create_recognizer("unet_segmenter", num_classes=2), UNetSegmenter)
  assert isinstance(create_enhancer("unet", channels=1), UNetEnhancer)
  with pytest.raises(ValueError, match="unknown enhancer 'vdsr'; valid: unet, edsr"):
    create_enhancer("vdsr", channels=1)
  with pytest.raises(ValueError, match="unknown recognizer 'vit'; valid: resnet, unet_segmenter"):
    create_recognizer("vit", num_classes=2)


def _textured_images(n=4, size=16):
  """Sums of oriented sinusoids: detail that bicubic upsampling cannot restore."""
  y, x = jnp.meshgrid(jnp.arange(size) / size, jnp.arange(size) / size, indexing="ij")
  images = [0.5 + 0.2 * jnp.sin(2 * jnp.pi * ((i + 2) * x + (3 - i) * y))
            + 0.2 * jnp.cos(2 * jnp.pi * (5 * x - (i + 1) * y)) for i in range(n)]
  return jnp.stack(images)[..., None]


def _overfit(model, inputs, targets, steps=150, learning_rate=3e-3):
  """Initial and final MSE of Adam training on a fixed batch."""
  params = jax.jit(model.init)(KEY, inputs)
  optimizer = optax.adam(learning_rate)

  def loss_fn(params):
    return jnp.mean((model.apply(params, inputs, train=True) - targets) ** 2)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, state = optimizer.update(grads, state, params)
      return (optax.apply_updates(params, updates), state), loss
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None, steps)
    return losses[0], loss_fn(params)

  return [float(v) for v in train(params)]


def test_edsr_overfits_a_handful_of_images():
  hr = _textured_images()
  first, last = _overfit(EDSR(channels=1, scale=2, features=16, num_blocks=2),
                         degradations.downsample(hr, 2), hr)
  assert last < first / 10, (first, last)


def test_unet_enhancer_overfits_a_handful_of_images():
  clean = _textured_images()
  noisy = degradations.gaussian_noise(KEY, clean, 0.1)
  first, last = _overfit(UNetEnhancer(channels=1, features=8, num_levels=2), noisy, clean)
  assert last < first / 10, (first, last)


# Rematerialisation (config model.remat) and compute dtype (model.dtype).

REMAT_MODELS = [
    (lambda remat: EDSR(channels=3, scale=2, features=8, num_blocks=2, remat=remat), (2, 8, 8, 3)),
    (lambda remat: UNetEnhancer(channels=1, features=4, num_levels=2, remat=remat), (2, 8, 8, 1)),
    (lambda remat: ResNetClassifier(num_classes=3, stage_sizes=(1, 1), features=4, remat=remat),
     (2, 8, 8, 1)),
    (lambda remat: UNetSegmenter(num_classes=2, features=4, num_levels=2, remat=remat),
     (2, 8, 8, 3)),
]


@pytest.mark.parametrize("make_model,shape", REMAT_MODELS)
def test_remat_keeps_parameters_and_gradients(make_model, shape):
  x = jax.random.uniform(KEY, shape)

  @jax.jit
  def gradients(x):
    plain, recomputed = make_model(False), make_model(True)
    params = plain.init(KEY, x)
    loss = lambda model: lambda p: jnp.sum(jnp.sin(model.apply(p, x, train=True)))
    return params, recomputed.init(KEY, x), jax.grad(loss(plain))(params), jax.grad(
        loss(recomputed))(params)

  params, remat_params, plain, recomputed = gradients(x)
  # Same parameter tree (checkpoints load either way) and the same gradients, to rounding.
  assert jax.tree.structure(params) == jax.tree.structure(remat_params)
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(recomputed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(plain)) > 0


def test_remat_lowers_the_compiled_gradients_temporary_memory():
  x = jax.ShapeDtypeStruct((4, 128, 128, 3), jnp.float32)

  def temp_bytes(remat):
    model = UNetSegmenter(num_classes=2, features=16, num_levels=3, remat=remat)
    params = jax.eval_shape(model.init, KEY, x)
    grad = jax.grad(lambda p, x: jnp.sum(model.apply(p, x, train=True) ** 2))
    return jax.jit(grad).lower(params, x).compile().memory_analysis().temp_size_in_bytes

  plain, recomputed = temp_bytes(False), temp_bytes(True)
  assert recomputed < 0.95 * plain, (plain, recomputed)


@pytest.mark.parametrize("make_model,shape", REMAT_MODELS)
def test_bfloat16_compute_keeps_float32_parameters(make_model, shape):
  model = make_model(False).clone(dtype=jnp.bfloat16)
  x = jnp.zeros(shape)
  variables = jax.eval_shape(model.init, KEY, x)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  out = jax.eval_shape(functools.partial(model.apply, train=True), variables, x)
  # Enhancers add their residual to the float32 input; recognisers' logits are bfloat16.
  assert out.dtype in (jnp.float32, jnp.bfloat16)
  if isinstance(model, (ResNetClassifier, UNetSegmenter)):
    assert out.dtype == jnp.bfloat16
