"""The skeleton a gradient combiner is built on: everything but its combine rule.

A combiner takes g_e as ``updates`` and g_t as the keyword-only extra argument ``task_grads``, checks
that g_t is there and matches g_e, measures cos(g_e, g_t) (every method logs it, so runs of all
methods can be compared on the same plots), and keeps a :class:`CombinerState`. Only the *rule* that
makes the update from (g_e, g_t) differs between methods; :func:`make_combiner` supplies the rest.
GradProm itself (per-leaf decisions, the moving-average wrapper) is written out in full in
``gradprom.py``; it shares :func:`check_task_grads`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.combiners import gradient_geometry as geometry
from gradprom_jax.combiners.state import init_combiner_state, next_combiner_state

# (g_e, g_t, count) -> (the update, the gate: the float32 weight given to g_t, 0 when it was left out).
# ``count`` is the number of updates made before this one; g_t is None for a rule that does not need it.
CombineRule = Callable[[Any, Any, jax.Array], tuple[Any, jax.Array]]


def check_task_grads(updates: Any, task_grads: Any, name: str) -> None:
  """A clear error when ``task_grads`` is missing or does not match ``updates``.

  >>> import jax.numpy as jnp
  >>> check_task_grads(jnp.zeros(2), None, "joint")
  Traceback (most recent call last):
  ...
  ValueError: joint needs the task gradient: call tx.update(g_e, state, params, task_grads=g_t).
  """
  if task_grads is None:
    raise ValueError(
        f"{name} needs the task gradient: call tx.update(g_e, state, params, task_grads=g_t).")
  if jax.tree.structure(updates) != jax.tree.structure(task_grads):
    raise ValueError(
        f"{name}: task_grads must have the same tree structure as updates; got "
        f"{jax.tree.structure(task_grads)} vs {jax.tree.structure(updates)}.")


def make_combiner(name: str, rule: CombineRule,
                  needs_task_grads: bool = True) -> optax.GradientTransformationExtraArgs:
  """A combiner called ``name`` (in its errors) whose update is ``rule``'s, with a global decision.

  Args:
    name: the method's name, shown in errors.
    rule: ``rule(g_e, g_t, count) -> (update, gate)``; see :data:`CombineRule`.
    needs_task_grads: refuse an update without ``task_grads``. When False, ``task_grads`` is optional:
      absent, the rule gets None and the logged cosine is 0.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`CombinerState`.

  >>> import jax.numpy as jnp
  >>> halve = make_combiner("halve", lambda e, t, count: (e + 0.5 * t, jnp.float32(0.5)))
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
  >>> update, state = halve.update(g_e, halve.init(g_e), task_grads=g_t)
  >>> update, float(state.gate), int(state.promoted), float(state.cosine)
  (Array([1., 1.], dtype=float32), 0.5, 1, 0.0)
  """
  def init_fn(params):
    return init_combiner_state(params)

  def update_fn(updates, state, params=None, *, task_grads=None, **extra_args):
    del params, extra_args
    if needs_task_grads or task_grads is not None:
      check_task_grads(updates, task_grads, name)
    combined, gate = rule(updates, task_grads, state.count)
    cosine = (jnp.zeros([], jnp.float32) if task_grads is None
              else geometry.cosine_similarity(updates, task_grads))
    return combined, next_combiner_state(state, cosine, gate)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
