"""Gradient accumulation around a combiner: average g_e *and* g_t over the micro-steps, then combine once.

``optax.MultiSteps`` averages ``updates`` (g_e) over its micro-steps but hands the wrapped optimiser
each call's own extra arguments: at the emitting step a combiner inside it compares the mean g_e
with the *last* micro-batch's ``task_grads``, so the gate (and the term it adds) comes from one
micro-batch while g_e comes from all of them. :func:`multi_steps` is ``optax.MultiSteps`` with
``task_grads`` accumulated beside ``updates``; the train step's own ``accumulate_steps`` (which
averages g_e and g_t over micro-batches inside one step) computes the same update.

A combiner cannot see its caller's state, but it can see its caller: optax's wrapper calls it from
``optax.MultiSteps.update`` (eagerly, or while tracing under ``jit``), and every combiner refuses to
run there unless the wrapper is :func:`multi_steps` (:func:`check_not_in_optax_multisteps`).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import jax
import optax

from gradprom_jax.core.combiners.tasks import TaskSpec, resolve_tasks

_MULTISTEPS_UPDATE = optax.MultiSteps.update.__code__


class _MultiStepsWithTaskGrads(optax.MultiSteps):
  """``optax.MultiSteps`` whose accumulated "updates" are the pair (g_e, g_t): see :func:`multi_steps`."""


def check_not_in_optax_multisteps(name: str) -> None:
  """Raises ValueError when called from inside ``optax.MultiSteps.update`` (not :func:`multi_steps`).

  >>> check_not_in_optax_multisteps("gradprom")   # called directly: fine
  """
  frame = sys._getframe(1)
  while frame is not None:
    if (frame.f_code is _MULTISTEPS_UPDATE
        and not isinstance(frame.f_locals.get("self"), _MultiStepsWithTaskGrads)):
      raise ValueError(
          f"{name} is wrapped in optax.MultiSteps, which averages g_e over the micro-steps but passes "
          "each call's own task_grads, so the gate would compare the mean g_e with the last "
          "micro-batch's g_t; use gradprom_jax.multi_steps(tx, every_k_schedule), which averages "
          "both.")
    frame = frame.f_back


def _paired(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``tx`` taking ``(g_e, g_t)`` as its updates: it calls ``tx.update(g_e, ..., task_grads=g_t)``."""
  tx = optax.with_extra_args_support(tx)

  def init_fn(pair):
    return tx.init(pair[0])

  def update_fn(pair, state, params=None, **extra_args):
    enhancement_grads, task_grads = pair
    return tx.update(enhancement_grads, state, params, task_grads=task_grads, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def multi_steps(tx: optax.GradientTransformation,
                every_k_schedule: int | Callable[[jax.Array], jax.Array], *,
                tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """``optax.MultiSteps`` for a chain holding a combiner: averages ``task_grads`` as well as g_e.

  Each call takes one micro-batch's g_e (``updates``) and g_t (``task_grads``). Every
  ``every_k_schedule``-th call returns ``tx``'s update of the mean g_e and the mean g_t, which is
  what the train step's ``accumulate_steps`` computes from the same micro-batches; the other calls
  return zeros and leave ``tx``'s state alone (as ``optax.MultiSteps``).

  Args:
    tx: the optimiser to wrap, e.g. ``optax.chain(gradprom(), optax.adamw(1e-3))``.
    every_k_schedule: micro-steps per update: an int, or a function of the update count (as in
      ``optax.MultiSteps``).
    tasks: the combiner's ``tasks`` (None: ``task_grads`` is one tree like the params; a number
      or names: a tuple or dict of such trees), so that the accumulator has their form.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an ``optax.MultiStepsState``.

  A micro-batch's g_t alone would open the gate here (cos > 0); the mean g_t closes it:

  >>> import jax.numpy as jnp, optax
  >>> from gradprom_jax.core.combiners import gradprom
  >>> tx = multi_steps(optax.chain(gradprom(), optax.sgd(1.0)), every_k_schedule=2)
  >>> params = jnp.zeros(2)
  >>> state = tx.init(params)
  >>> g_e = jnp.array([1.0, 0.0])
  >>> _, state = tx.update(g_e, state, params, task_grads=jnp.array([-3.0, 1.0]))
  >>> tx.update(g_e, state, params, task_grads=jnp.array([1.0, 1.0]))[0]
  Array([-1., -0.], dtype=float32)
  """
  layout = resolve_tasks(tasks)
  accumulator = _MultiStepsWithTaskGrads(_paired(tx), every_k_schedule)

  def init_fn(params):
    return accumulator.init((params, layout.join([params] * len(layout.names))))

  def update_fn(updates, state, params=None, *, task_grads=None, **extra_args):
    if task_grads is None:
      raise ValueError("multi_steps accumulates task_grads beside the updates: call "
                       "tx.update(g_e, state, params, task_grads=g_t) (else use optax.MultiSteps).")
    return accumulator.update((updates, task_grads), state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
