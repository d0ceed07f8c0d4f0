"""Images reach the devices as uint8, and the models as the same float32 images in [0, 1] as before
(when the host divided by 255), bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.core.image_dtype import to_unit_float
from gradprom_jax.training import evaluation
from gradprom_jax.training.train_step import make_train_step

from test_train_step import IMAGE, setup, tiny_config  # noqa: E402

ALL_VALUES = np.arange(256, dtype=np.uint8)
# What the input pipeline made of a uint8 image before images stayed uint8 up to the device.
HOST_FLOATS = np.asarray(ALL_VALUES, np.float32) / np.float32(255)


def test_every_uint8_value_becomes_the_float_the_host_computed():
  on_device = np.asarray(jax.jit(to_unit_float)(ALL_VALUES.reshape(1, 16, 16, 1))).reshape(-1)
  assert on_device.dtype == np.float32
  np.testing.assert_array_equal(on_device.view(np.uint32), HOST_FLOATS.view(np.uint32))
  np.testing.assert_array_equal(to_unit_float(ALL_VALUES).view(np.uint32),
                                HOST_FLOATS.view(np.uint32))
  # A division on the device is not bit-exact (XLA multiplies by the reciprocal): the reason for
  # the lookup. If this starts failing, the division would do and the lookup could go.
  divided = np.asarray(jax.jit(lambda v: v.astype(jnp.float32) / np.float32(255))(ALL_VALUES))
  assert not np.array_equal(divided, HOST_FLOATS)


def _batches(seed=0, batch_size=8):
  """The same batch as the loader yields it now (uint8) and as it yielded it before (float32)."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, size=(batch_size, *IMAGE), dtype=np.uint8)
  mask = (pixels[..., 0] > 127).astype(np.int32)
  return {"image": pixels, "mask": mask}, {"image": HOST_FLOATS[pixels], "mask": mask}


def _assert_trees_identical(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_train_and_eval_steps_give_identical_results_on_uint8_and_float_batches():
  config = tiny_config()
  system, phases, enhancer_tx, recognizer_tx, state = setup(config)
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx,
                                 task_weight=dict.fromkeys(system.task_names, config.task_weight)))
  uint8_batch, float_batch = _batches()
  _assert_trees_identical(step(state, uint8_batch), step(state, float_batch))

  eval_step = jax.jit(evaluation.make_eval_step(system))
  outputs = [eval_step(state.enhancer_params, state.recognizer_params, batch, 0)
             for batch in (uint8_batch, float_batch)]
  _assert_trees_identical(*outputs)
  assert np.all(np.isfinite(outputs[0]["enhanced"]["psnr"]))


@pytest.mark.slow   # 20 s; the uint8 images test beside it stays in the default suite
def test_uint8_masks_give_the_results_of_int32_masks():
  """The loader sends masks as uint8; the compiled programs see the int32 class ids of before."""
  config = tiny_config()
  system, phases, enhancer_tx, recognizer_tx, state = setup(config)
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx,
                                 task_weight=dict.fromkeys(system.task_names, config.task_weight)))
  eval_step = jax.jit(evaluation.make_eval_step(system))
  batch, _ = _batches(seed=1)
  uint8_masks = {**batch, "mask": batch["mask"].astype(np.uint8)}
  _assert_trees_identical(step(state, uint8_masks), step(state, batch))
  _assert_trees_identical(
      *[eval_step(state.enhancer_params, state.recognizer_params, b, 0) for b in (uint8_masks, batch)])
