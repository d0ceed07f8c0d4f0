"""An exponential moving average of the parameters, kept as the last member of an optax chain.

``optax.ema`` averages *updates*; this averages the *parameters* the chain produces. As the last
member of a chain it sees the current parameters θ and the final update u, so after each step

    ema ← decay · ema + (1 − decay) · (θ + u)

It passes the updates through unchanged, and its state lives in the optimiser state: checkpointed,
skipped on non-finite steps and left alone in phases that do not update the model, like any other.
The average starts at the initial parameters (no bias correction): choose ``decay`` so that
1 / (1 − decay) is well below the number of updates.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class ParamsEmaState(NamedTuple):
  """The moving average of the parameters (same tree, shapes and dtypes as the parameters)."""
  ema: Any


def params_ema(decay: float) -> optax.GradientTransformationExtraArgs:
  """Keeps a moving average of the parameters; the updates pass through unchanged.

  Put it last in an ``optax.chain``: it must see the final updates.

  >>> import jax.numpy as jnp, optax
  >>> tx = optax.chain(optax.sgd(1.0), params_ema(0.5))
  >>> params = jnp.array([0.0])
  >>> state = tx.init(params)
  >>> updates, state = tx.update(jnp.array([-2.0]), state, params)   # params become [2.0]
  >>> updates.tolist(), find_params_ema(state).tolist()    # 0.5 * 0 + 0.5 * 2
  ([2.0], [1.0])
  """
  if not 0 <= decay < 1:
    raise ValueError(f"decay={decay} must be in [0, 1)")

  def init_fn(params):
    # A copy, not the params' own buffers: a jit step donating the state must not see one buffer twice.
    return ParamsEmaState(ema=jax.tree.map(lambda p: jnp.array(p, copy=True), params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("params_ema needs the parameters: call update(updates, state, params)")
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree.map(lambda e, p: (decay * e + (1 - decay) * p).astype(e.dtype),
                       state.ema, new_params)
    return updates, ParamsEmaState(ema=ema)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def find_params_ema(opt_state: Any) -> Any | None:
  """The parameters' moving average held in a whole optimiser state, or None when it holds none.

  >>> import optax
  >>> find_params_ema(optax.adam(1e-3).init({"w": jnp.zeros(2)})) is None
  True
  """
  is_ema = lambda x: isinstance(x, ParamsEmaState)
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=is_ema) if is_ema(s)]
  return states[0].ema if states else None
