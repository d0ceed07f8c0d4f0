"""The state every gradient combiner keeps: counters and the last decision, for logging and resuming.

All fields are arrays (never Python scalars), so the state jits, shards and checkpoints like any optax
state. With ``granularity="per_leaf"`` the per-decision fields are pytrees with the gradients' structure.
GradProm gating on a moving average of the cosine wraps this state in a :class:`GradPromEmaState`,
gating on moving averages of the gradients in a :class:`GradPromMomentState` (the
:class:`CombinerState` itself never changes, so checkpoints of older runs still restore). A combiner built for several tasks keeps one such state per task in a
:class:`~gradprom_jax.core.combiners.tasks.MultiTaskState`; a single task's state is unchanged.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradprom_jax.core.combiners.tasks import MultiTaskState, metric_key


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


class GradPromEmaState(NamedTuple):
  """State of :func:`~gradprom_jax.gradprom` with ``cosine_ema > 0``: the shared state, plus the EMA.

  Attributes:
    combiner: the :class:`CombinerState` every combiner keeps (found by `find_combiner_state`).
    cosine_ema: float32, the bias-corrected moving average of the cosine that the last gate used
      (0 before the first update; a tree for per-leaf decisions). See :func:`next_cosine_ema`.
  """
  combiner: CombinerState
  cosine_ema: Any


class GradPromMomentState(NamedTuple):
  """State of :func:`~gradprom_jax.gradprom` with ``gradient_ema > 0``: the shared state, the moments.

  Attributes:
    combiner: the :class:`CombinerState` every combiner keeps (found by `find_combiner_state`).
    enhancement_moment: float32 tree like g_e, the (uncorrected) moving average m_e of g_e.
    task_moment: float32 tree like g_e, the (uncorrected) moving average m_t of g_t.
    moment_cosine: float32, cos(m_e, m_t) that the last gate used (0 before the first update; a tree
      for per-leaf decisions). See :mod:`~gradprom_jax.core.combiners.moment_gate`.
  """
  combiner: CombinerState
  enhancement_moment: Any
  task_moment: Any
  moment_cosine: Any


class GradVacState(NamedTuple):
  """State of :func:`~gradprom_jax.gradvac` for one task: the shared state, plus the cosine target.

  Attributes:
    combiner: the :class:`CombinerState` every combiner keeps (found by `find_combiner_state`); its
      ``gate`` is 1 when g_t was added unchanged (φ ≥ φ̂), 0 when it was vaccinated or left out.
    target_cosine: float32, φ̂ for the next update (0 before the first), logged as ``target_cosine``.
  """
  combiner: CombinerState
  target_cosine: jax.Array


def next_cosine_ema(cosine_ema: jax.Array, cosine: jax.Array, count: jax.Array,
                    decay: float | jax.Array) -> jax.Array:
  """The bias-corrected EMA after update number ``count + 1`` whose cosine is ``cosine``.

  With m_t = β m_{t-1} + (1 − β) cos_t, m_0 = 0, the corrected value is m_t / (1 − β^t) (as Adam
  corrects its moments), so the first updates are not pulled towards the 0 the average starts from:
  after one update it is exactly cos_1. Stored corrected, m_{t-1} = ema_{t-1} (1 − β^{t-1}).

  >>> import jax.numpy as jnp
  >>> first = next_cosine_ema(jnp.float32(0), jnp.float32(0.8), jnp.int32(0), 0.9)
  >>> second = next_cosine_ema(first, jnp.float32(-0.2), jnp.int32(1), 0.9)
  >>> round(float(first), 4), round(float(second), 4)   # second: (0.9·0.08 − 0.1·0.2) / 0.19
  (0.8, 0.2737)
  """
  decay = jnp.asarray(decay, jnp.float32)
  t = count.astype(jnp.float32) + 1.0
  previous_sum = cosine_ema * (1.0 - decay ** (t - 1.0))
  return (decay * previous_sum + (1.0 - decay) * cosine) / (1.0 - decay ** t)


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
  """The first :class:`CombinerState` inside an optimiser state (``optax.chain``, ``partition``, …).

  For a combiner of several tasks, that is the first task's (its ``count`` is every task's); use
  :func:`find_combiner_metrics` for all of them.
  """
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, CombinerState))
           if isinstance(s, CombinerState)]
  return found[0] if found else None


def is_per_leaf(state: CombinerState) -> bool:
  """Whether ``state`` holds one decision per parameter array: its ``gate`` is a tree of the params'
  structure (a container), where a global decision's gate is a single scalar leaf.

  >>> import jax.numpy as jnp
  >>> params = {"w": jnp.ones(3), "b": jnp.ones(1)}
  >>> is_per_leaf(init_combiner_state(params)), is_per_leaf(init_combiner_state(params, per_leaf=True))
  (False, True)
  """
  return not jax.tree_util.treedef_is_leaf(jax.tree.structure(state.gate))


def _mean_over_leaves(tree: Any) -> jax.Array:
  leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)]
  return jnp.mean(jnp.stack(leaves)) if leaves else jnp.zeros([], jnp.float32)


def _first(tree: Any, kind: type) -> Any:
  is_kind = lambda x: isinstance(x, kind)
  found = [s for s in jax.tree.leaves(tree, is_leaf=is_kind) if is_kind(s)]
  return found[0] if found else None


def _per_task(state: MultiTaskState, metrics_of, suffixed: bool = True) -> dict[str, jax.Array]:
  """``metrics_of`` each task's state, the names suffixed with the task's (``cosine/masks``); not
  suffixed (``suffixed=False``) for a state of one task."""
  tasks = state.tasks
  items = tasks.items() if isinstance(tasks, dict) else ((str(k), s) for k, s in enumerate(tasks))
  if not suffixed and len(tasks) != 1:
    raise ValueError(f"plain metric keys need a combiner of one task, not {len(tasks)}.")
  return {metric_key(key, name, suffixed): value for name, task_state in items
          for key, value in metrics_of(task_state).items()}


def find_combiner_metrics(opt_state: Any, *, suffixed: bool = True) -> dict[str, jax.Array]:
  """The combiner's scalars to log from a whole optimiser state ({} when it holds no combiner).

  `combiner_metrics` of its :class:`CombinerState`, plus ``cosine_ema`` (the bias-corrected moving
  average GradProm gated on, averaged over leaves) when it holds a :class:`GradPromEmaState`, or
  ``moment_cosine`` (the cosine of the gradients' moving averages) for a
  :class:`GradPromMomentState`, or ``target_cosine`` (GradVac's φ̂) for a :class:`GradVacState`.
  For a combiner built for tasks (by name or number), each task's, suffixed with the task's name
  (``cosine/masks``, or ``cosine/0`` for tasks given by number); ``suffixed=False`` keeps the
  plain keys of a combiner built for one task (a run of the single-task form).

  >>> import jax.numpy as jnp, optax
  >>> from gradprom_jax.core.combiners.gradprom import gradprom
  >>> tx = optax.chain(gradprom(cosine_ema=0.9), optax.sgd(0.1))
  >>> g_e = jnp.array([1.0, 0.0])
  >>> _, state = tx.update(g_e, tx.init(g_e), g_e, task_grads=jnp.array([1.0, 1.0]))
  >>> {k: round(float(v), 3) for k, v in find_combiner_metrics(state).items()}
  {'cosine': 0.707, 'gate': 1.0, 'gate_open_rate': 1.0, 'cosine_ema': 0.707}
  >>> tx = optax.chain(gradprom(tasks=["masks"]), optax.sgd(0.1))
  >>> _, state = tx.update(g_e, tx.init(g_e), g_e, task_grads={"masks": jnp.array([1.0, 1.0])})
  >>> sorted(find_combiner_metrics(state)), sorted(find_combiner_metrics(state, suffixed=False))
  (['cosine/masks', 'gate/masks', 'gate_open_rate/masks'], ['cosine', 'gate', 'gate_open_rate'])
  """
  multi_task = _first(opt_state, MultiTaskState)
  if multi_task is not None:
    return _per_task(multi_task, find_combiner_metrics, suffixed)
  combiner_state = find_combiner_state(opt_state)
  if combiner_state is None:
    return {}
  metrics = combiner_metrics(combiner_state)
  ema_state = _first(opt_state, GradPromEmaState)
  if ema_state is not None:
    metrics["cosine_ema"] = _mean_over_leaves(ema_state.cosine_ema)
  moment_state = _first(opt_state, GradPromMomentState)
  if moment_state is not None:
    metrics["moment_cosine"] = _mean_over_leaves(moment_state.moment_cosine)
  vaccine_state = _first(opt_state, GradVacState)
  if vaccine_state is not None:
    metrics["target_cosine"] = jnp.asarray(vaccine_state.target_cosine, jnp.float32)
  return metrics


def combiner_metrics(state: CombinerState | MultiTaskState) -> dict[str, jax.Array]:
  """Scalar summaries for logging: the last cosine and gate, and the fraction of promoted updates.

  Per-leaf states are summarised over leaves: ``cosine`` is the mean per-leaf cosine, ``gate`` the
  fraction of leaves whose gate was open at the last update (the *promoted fraction*). Whether a
  state is per-leaf is read from its structure (see :func:`is_per_leaf`), so a state restored from a
  checkpoint as NumPy arrays is summarised as the one that was saved. A :class:`MultiTaskState` is
  summarised task by task, the names suffixed with the task's (as :func:`find_combiner_metrics`).

  >>> import jax.numpy as jnp, numpy as np
  >>> state = next_combiner_state(init_combiner_state({"w": jnp.ones(3)}), 0.5, 1.0)
  >>> {k: round(float(v), 2) for k, v in combiner_metrics(state).items()}
  {'cosine': 0.5, 'gate': 1.0, 'gate_open_rate': 1.0}
  >>> soft = state._replace(gate=np.float32(0.3))   # a soft global gate, restored as NumPy
  >>> round(float(combiner_metrics(soft)["gate"]), 2)
  0.3
  """
  if isinstance(state, MultiTaskState):
    return _per_task(state, find_combiner_metrics)
  mean = _mean_over_leaves
  per_leaf = is_per_leaf(state)
  open_gates = jax.tree.map(lambda g: (g > 0).astype(jnp.float32), state.gate)
  count = jnp.maximum(state.count, 1).astype(jnp.float32)
  return {
      "cosine": mean(state.cosine),
      "gate": mean(open_gates) if per_leaf else jnp.asarray(state.gate, jnp.float32),
      "gate_open_rate": mean(state.promoted) / count,
  }
