"""Mixed precision (config model.dtype="bfloat16"): trains, and agrees with float32 where it matters.

The models compute in bfloat16; parameters, optimiser states, losses and GradProm's cosine stay
float32. Tolerances are stated where they are used.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradprom_jax.configuration.config import base_config, shrink_for_smoke_test
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.core.combiners import find_combiner_state, gradprom
from gradprom_jax.training.train_state import create_train_state
from gradprom_jax.training.train_step import make_train_step, shared_forward_gradients
from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                 recognizer_tx_from_config)

IMAGE_SIZE = 32
# bfloat16 keeps 8 significant bits (relative rounding 2**-8 ≈ 0.4 %); after a forward and a backward
# pass through a few convolutions a few percent of relative error in a gradient is expected: the
# enhancer's g_e and g_t (what GradProm's cosine sees) measured 5.5 % and 5.0 % on this fixture.
GRADIENT_RTOL = 0.1


def _config(dtype: str):
  config = shrink_for_smoke_test(base_config())
  config.model.dtype = dtype
  config.optim.warmup_steps = 1
  # A smooth enhancement loss: L1's gradient sign(y - x) flips wherever bfloat16 rounding moves y
  # across x, which measures the loss's kink rather than the precision of the backward pass.
  config.task.enhancement_loss = "mse"
  return config


def _batch(key=jax.random.key(1)):
  """Bright discs on a textured background, their masks as the segmentation target."""
  y, x = jnp.meshgrid(jnp.arange(IMAGE_SIZE), jnp.arange(IMAGE_SIZE), indexing="ij")
  centres = jnp.array([[10, 12], [20, 18], [14, 22], [22, 9]])
  masks = jnp.stack([((y - cy) ** 2 + (x - cx) ** 2 < 36).astype(jnp.int32) for cy, cx in centres])
  texture = 0.1 * jax.random.uniform(key, (len(centres), IMAGE_SIZE, IMAGE_SIZE, 3))
  images = 0.3 + 0.4 * masks[..., None] * jnp.array([0.9, 0.6, 0.5]) + texture
  return {"image": images, "mask": masks}


def _system_and_state(dtype: str):
  config = _config(dtype)
  system = system_from_config(config, channels=3, num_classes=2)
  phases = phases_from_config(config)
  enhancer_tx = enhancer_tx_from_config(config, phases)
  recognizer_tx = recognizer_tx_from_config(config, phases)
  enhancer_params, recognizer_params = system.init_params(jax.random.key(0),
                                                          (IMAGE_SIZE, IMAGE_SIZE, 3))
  state = create_train_state(seed=0, enhancer_params=enhancer_params,
                             recognizer_params=recognizer_params, enhancer_tx=enhancer_tx,
                             recognizer_tx=recognizer_tx)
  step = make_train_step(system, phases[-1], enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
                         task_weight=config.task_weight)
  return system, state, step


def _relative_error(approximate, exact) -> float:
  difference = jax.tree.map(jnp.subtract, approximate, exact)
  return float(optax.tree.norm(difference) / optax.tree.norm(exact))


def test_config_builds_bfloat16_models():
  system, _, _ = _system_and_state("bfloat16")
  assert system.enhancer.dtype == jnp.bfloat16 and system.heads[0].module.dtype == jnp.bfloat16


def test_bfloat16_training_reduces_the_losses_and_keeps_float32_state():
  _, state, step = _system_and_state("bfloat16")
  batch = _batch()

  @jax.jit
  def train(state):
    def body(state, _):
      state, metrics = step(state, batch)
      return state, metrics["enhancement_loss"] + metrics["task_loss"]
    return jax.lax.scan(body, state, None, length=30)

  state, losses = train(state)
  losses = np.asarray(losses)
  assert np.all(np.isfinite(losses)) and int(state.nonfinite_total) == 0
  assert losses[-5:].mean() < 0.95 * losses[:5].mean(), losses
  float_leaves = [x for x in jax.tree.leaves((state.enhancer_params, state.recognizer_params,
                                               state.enhancer_opt_state,
                                               state.recognizer_opt_state))
                  if jnp.issubdtype(x.dtype, jnp.floating)]
  assert {x.dtype for x in float_leaves} == {jnp.dtype(jnp.float32)}


def test_bfloat16_first_step_gradients_match_float32():
  batch = _batch()
  gradients = {}
  for dtype in ("float32", "bfloat16"):
    system, state, _ = _system_and_state(dtype)
    # Train-mode random weights: the zero-initialised output layer would make g_t vanish at step 0.
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                          state.enhancer_params)
    low_quality = system.degrade(jax.random.key(3), batch["image"], jnp.arange(4))
    out = jax.jit(lambda e, r, x: shared_forward_gradients(system, e, r, x, batch))(
        params, state.recognizer_params, low_quality)
    gradients[dtype] = out
  exact, mixed = gradients["float32"], gradients["bfloat16"]
  for name in ("enhancement_grads", "task_grads", "recognizer_grads"):
    assert {g.dtype for g in jax.tree.leaves(mixed[name])} == {jnp.dtype(jnp.float32)}
  for name in ("enhancement_grads", "task_grads"):
    error = _relative_error(mixed[name], exact[name])
    assert 0 < error < GRADIENT_RTOL, (name, error)  # > 0: bfloat16 really computed.
  # The recogniser's own gradient at initialisation is a sum of nearly cancelling terms (balanced
  # softmax errors summed over pixels), so its relative error is larger (≈ 45 % here); its
  # direction still agrees.
  cosine = optax.tree.vdot(mixed["recognizer_grads"], exact["recognizer_grads"]) / (
      optax.tree.norm(mixed["recognizer_grads"]) * optax.tree.norm(exact["recognizer_grads"]))
  assert float(cosine) > 0.8, float(cosine)
  for name in ("enhancement_loss", "task_loss"):
    for got, want in zip(jax.tree.leaves(mixed[name]), jax.tree.leaves(exact[name])):
      assert got.dtype == jnp.float32
      np.testing.assert_allclose(got, want, rtol=GRADIENT_RTOL)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bfloat16_gate_decision_matches_float32(sign):
  # A clear cosine: the task cotangent at the enhanced image is ±(enhancement cotangent) plus 10 %
  # noise, pulled back through the bfloat16 and the float32 enhancer.
  batch = _batch()
  decisions, cosines = {}, {}
  for dtype in ("float32", "bfloat16"):
    system, state, _ = _system_and_state(dtype)
    low_quality = system.degrade(jax.random.key(3), batch["image"], jnp.arange(4))

    @jax.jit
    def gate(params, low_quality):
      enhanced, pullback = jax.vjp(lambda p: system.enhance(p, low_quality, train=True), params)
      d_e = jax.grad(system.enhancement_loss)(enhanced, batch["image"])
      noise = jax.random.normal(jax.random.key(4), d_e.shape) * jnp.std(d_e)
      g_e, g_t = pullback(d_e)[0], pullback(sign * d_e + 0.1 * noise)[0]
      tx = gradprom()
      _, combiner_state = tx.update(g_e, tx.init(params), task_grads=g_t)
      return find_combiner_state(combiner_state)

    combiner_state = gate(state.enhancer_params, low_quality)
    decisions[dtype], cosines[dtype] = float(combiner_state.gate), float(combiner_state.cosine)
  assert decisions["bfloat16"] == decisions["float32"] == (1.0 if sign > 0 else 0.0)
  assert cosines["float32"] * sign > 0.5 and abs(cosines["bfloat16"] - cosines["float32"]) < 0.05
