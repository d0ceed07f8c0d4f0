"""The skeleton a gradient combiner is built on: everything but its combine rule.

A combiner takes g_e as ``updates`` and g_t as the keyword-only extra argument ``task_grads`` (one tree,
or for several tasks a tuple or dict of trees, one per task; see :mod:`~gradprom_jax.core.combiners.tasks`),
checks that g_t is there and matches g_e, measures cos(g_e, g_t) per task (every method logs it, so
runs of all methods can be compared on the same plots), and keeps a :class:`CombinerState` per task.
Only the *rule* that makes each task's term from (g_e, g_t) differs between methods; the update is
g_e plus the tasks' terms, and :func:`make_combiner` supplies the rest. GradProm itself (per-leaf
decisions, the moving-average wrapper) is written out in full in ``gradprom.py``; it shares
:func:`check_task_grads`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners import gradient_geometry as geometry
from gradprom_jax.core.combiners.accumulation import check_not_in_optax_multisteps
from gradprom_jax.core.combiners.state import init_combiner_state, next_combiner_state
from gradprom_jax.core.combiners.tasks import SINGLE_TASK, Tasks, check_task_grads_form

# (g_e, g_t, count, task) -> (the term added to g_e, a tree like g_e or None for nothing; the gate: the
# float32 weight given to g_t, 0 when it was left out). ``count`` is the number of updates made before
# this one, ``task`` the task's index (0 for a single task); g_t is None for a rule that does not need it.
CombineRule = Callable[[Any, Any, jax.Array, int], tuple[Any, jax.Array]]


def check_task_grads(updates: Any, task_grads: Any, name: str, tasks: Tasks = SINGLE_TASK) -> None:
  """A clear error when ``task_grads`` is missing or does not match ``updates`` (and ``tasks``).

  >>> import jax.numpy as jnp
  >>> check_task_grads(jnp.zeros(2), None, "joint")
  Traceback (most recent call last):
  ...
  ValueError: joint needs the task gradient: call tx.update(g_e, state, params, task_grads=g_t).
  """
  if task_grads is None:
    raise ValueError(
        f"{name} needs the task gradient: call tx.update(g_e, state, params, task_grads=g_t).")
  check_task_grads_form(tasks, updates, task_grads, name)
  for one_task in tasks.split(task_grads):
    if jax.tree.structure(updates) != jax.tree.structure(one_task):
      raise ValueError(
          f"{name}: task_grads must have the same tree structure as updates; got "
          f"{jax.tree.structure(one_task)} vs {jax.tree.structure(updates)}.")


def make_combiner(name: str, rule: CombineRule, needs_task_grads: bool = True,
                  tasks: Tasks = SINGLE_TASK) -> optax.GradientTransformationExtraArgs:
  """A combiner called ``name`` (in its errors) whose update is g_e plus ``rule``'s term per task.

  Args:
    name: the method's name, shown in errors.
    rule: ``rule(g_e, g_t, count, task) -> (term, gate)``; see :data:`CombineRule`.
    needs_task_grads: refuse an update without ``task_grads``. When False, ``task_grads`` is optional:
      absent, the rule gets None and the logged cosine is 0.
    tasks: the tasks it combines (see :func:`~gradprom_jax.core.combiners.tasks.resolve_tasks`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`CombinerState`, or for
    several tasks a :class:`~gradprom_jax.core.combiners.tasks.MultiTaskState` of one per task.

  >>> import jax.numpy as jnp
  >>> halve = make_combiner("halve", lambda e, t, count, task: (0.5 * t, jnp.float32(0.5)))
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
  >>> update, state = halve.update(g_e, halve.init(g_e), task_grads=g_t)
  >>> update, float(state.gate), int(state.promoted), float(state.cosine)
  (Array([1., 1.], dtype=float32), 0.5, 1, 0.0)
  """
  def init_fn(params):
    return tasks.join_states([init_combiner_state(params) for _ in tasks.names])

  def update_fn(updates, state, params=None, *, task_grads=None, **extra_args):
    del params, extra_args
    check_not_in_optax_multisteps(name)
    if needs_task_grads or task_grads is not None:
      check_task_grads(updates, task_grads, name, tasks)
    per_task_grads = (None,) * len(tasks.names) if task_grads is None else tasks.split(task_grads)
    terms, new_states = [], []
    for task, (g_t, task_state) in enumerate(zip(per_task_grads, tasks.split_states(state))):
      term, gate = rule(updates, g_t, task_state.count, task)
      cosine = (jnp.zeros([], jnp.float32) if g_t is None
                else geometry.cosine_similarity(updates, g_t))
      terms += [] if term is None else [term]
      new_states.append(next_combiner_state(task_state, cosine, gate))
    return geometry.add_terms(updates, terms), tasks.join_states(new_states)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
