"""The state every gradient combiner keeps: counters and the last decision, for logging and resuming.

All fields are arrays (never Python scalars), so the state jits, shards and checkpoints like any optax
state. With ``granularity="per_leaf"`` the per-decision fields are pytrees with the gradients' structure.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class CombinerState(NamedTuple):
  """State of :func:`~gradprom_jax.gradprom` and its baselines.

  Attributes:
    count: int32 scalar, number of updates made.
    promoted: int32, number of updates in which the task gradient was added (the gate was open); a tree
      of per-leaf counts for per-leaf decisions.
    cosine: float32, the last cos(g_e, g_t) (0 when undefined); a tree for per-leaf decisions.
    gate: float32, the last weight given to g_t (hard gates: 0 or 1); a tree for per-leaf decisions.
  """
  count: jax.Array
  promoted: Any
  cosine: Any
  gate: Any


def init_combiner_state(params: Any, per_leaf: bool = False) -> CombinerState:
  """A zero :class:`CombinerState` for ``params`` (scalar fields, or per-leaf trees)."""
  def zeros(dtype):
    if per_leaf:
      return jax.tree.map(lambda _: jnp.zeros([], dtype), params)
    return jnp.zeros([], dtype)
  return CombinerState(count=jnp.zeros([], jnp.int32), promoted=zeros(jnp.int32),
                       cosine=zeros(jnp.float32), gate=zeros(jnp.float32))


def next_combiner_state(state: CombinerState, cosine: Any, gate: Any) -> CombinerState:
  """``state`` after one update whose decision was (``cosine``, ``gate``)."""
  promoted = jax.tree.map(lambda p, g: p + (jnp.asarray(g) > 0).astype(jnp.int32), state.promoted, gate)
  return CombinerState(count=state.count + 1, promoted=promoted,
                       cosine=jax.tree.map(lambda c: jnp.asarray(c, jnp.float32), cosine),
                       gate=jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), gate))


def find_combiner_state(opt_state: Any) -> CombinerState | None:
  """The first :class:`CombinerState` inside an optimiser state (``optax.chain``, ``partition``, …)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, CombinerState))
           if isinstance(s, CombinerState)]
  return found[0] if found else None


def combiner_metrics(state: CombinerState) -> dict[str, jax.Array]:
  """Scalar summaries for logging: the last cosine and gate, and the fraction of promoted updates.

  Per-leaf states are summarised over leaves: ``cosine`` is the mean per-leaf cosine, ``gate`` the
  fraction of leaves whose gate was open at the last update (the *promoted fraction*).

  >>> import jax.numpy as jnp
  >>> state = next_combiner_state(init_combiner_state({"w": jnp.ones(3)}), 0.5, 1.0)
  >>> {k: round(float(v), 2) for k, v in combiner_metrics(state).items()}
  {'cosine': 0.5, 'gate': 1.0, 'gate_open_rate': 1.0}
  """
  def mean(tree):
    leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)]
    return jnp.mean(jnp.stack(leaves)) if leaves else jnp.zeros([], jnp.float32)
  per_leaf = not isinstance(state.gate, jax.Array)
  open_gates = jax.tree.map(lambda g: (g > 0).astype(jnp.float32), state.gate)
  count = jnp.maximum(state.count, 1).astype(jnp.float32)
  return {
      "cosine": mean(state.cosine),
      "gate": mean(open_gates) if per_leaf else jnp.asarray(state.gate, jnp.float32),
      "gate_open_rate": mean(state.promoted) / count,
  }
