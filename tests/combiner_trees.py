"""Small pytrees and exact inner products shared by the combiner tests."""
import jax
import jax.numpy as jnp
import numpy as np


def random_tree(rng, shapes, scale=1.0):
  """A dict of float32 leaves ``layer<i>`` drawn from N(0, scale²) with the given shapes."""
  return {f"layer{i}": jnp.asarray(rng.normal(size=s) * scale, jnp.float32)
          for i, s in enumerate(shapes)}


def vdot(a, b):
  """⟨a, b⟩ over all leaves, in float64 (so the descent checks are not float32-rounding tests)."""
  return sum(float(np.vdot(np.float64(x), np.float64(y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def update_thrice_under_jit(tx, g_e, g_t):
  """Applies ``tx`` three times under jit, checking that the state's structure, shapes and dtypes
  never change; returns the final state."""
  state = tx.init(g_e)
  update = jax.jit(tx.update)
  for _ in range(3):
    _, new_state = update(g_e, state, task_grads=g_t)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
      assert (old.shape, old.dtype) == (new.shape, new.dtype)
    state = new_state
  return state
