"""Several downstream tasks for one enhancer: how a combiner names them and reads per-task options.

A combiner built for one task takes ``task_grads`` as one tree (the gradients' structure) and keeps
one state. Built for K tasks (``tasks=K`` or ``tasks=("masks", "diagnosis")``, or implied by a
per-task option such as ``task_weight={"masks": 1.0, "diagnosis": 0.3}``), it takes a tuple (or a
dict by task name) of K such trees and keeps one state per task in a :class:`MultiTaskState`.

Internally every combiner works on a tuple of tasks (one task when built for one): :class:`Tasks`
splits the caller's container into that tuple and puts per-task results back into the caller's form.
The train step always takes the by-name form, one entry for one task. :func:`metric_key` is the one
place a task's name joins a logged key (the combiners' metrics and every other per-task value).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax

# What a combiner's ``tasks`` argument takes: None (one task), a number of tasks, or their names.
TaskSpec = int | Sequence[str] | None
# A combiner option: one value for every task, or one per task (a tuple, a dict by name, a 1-D array).
PerTask = float | jax.Array | tuple | dict


class MultiTaskState(NamedTuple):
  """The state of a combiner built for several tasks: one state per task.

  Attributes:
    tasks: a tuple (tasks given by number) or dict (tasks given by name) of the per-task states, each
      the state the combiner keeps for a single task (a ``CombinerState``, ``GradPromEmaState`` or
      ``GradPromMomentState``).
  """
  tasks: tuple[Any, ...] | dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Tasks:
  """The tasks a combiner was built for.

  Attributes:
    names: the tasks' names, in the order their trees are combined (a dict's keys sorted, as JAX
      orders them; ``"0"``, ``"1"``, ... for tasks given by number). Metrics are suffixed with them.
    by_name: whether ``task_grads``, per-task options and the state are dicts (else tuples).
    single: built for one task given as one tree (the classic form): no container, plain state.
  """
  names: tuple[str, ...]
  by_name: bool
  single: bool = False

  def split(self, per_task: Any) -> tuple[Any, ...]:
    """The caller's container (a tuple, or a dict by name; the bare value when single) as a tuple."""
    if self.single:
      return (per_task,)
    return tuple(per_task[name] for name in self.names) if self.by_name else tuple(per_task)

  def join(self, values: Sequence[Any]) -> Any:
    """Per-task ``values`` (in ``names`` order) in the caller's form: the inverse of :meth:`split`."""
    if self.single:
      return values[0]
    return dict(zip(self.names, values)) if self.by_name else tuple(values)

  def join_states(self, states: Sequence[Any]) -> Any:
    """The combiner's state from one state per task: that state itself when single."""
    return states[0] if self.single else MultiTaskState(self.join(states))

  def split_states(self, state: Any) -> tuple[Any, ...]:
    """One state per task from the combiner's state: the inverse of :meth:`join_states`."""
    return (state,) if self.single else self.split(state.tasks)

  def matches(self, per_task: Any) -> bool:
    """Whether ``per_task`` is a container of exactly these tasks."""
    if self.by_name:
      return isinstance(per_task, Mapping) and sorted(per_task) == list(self.names)
    return isinstance(per_task, (tuple, list)) and len(per_task) == len(self.names)

  def option(self, name: str, value: Any) -> tuple[Any, ...]:
    """A combiner option, given once for all tasks or once per task, as one value per task.

    A per-task option is a tuple or list (tasks by number), a dict (tasks by name), or a 1-D array with
    one entry per task (tasks by number; e.g. an injected hyperparameter).

    >>> tasks = resolve_tasks(("masks", "diagnosis"))
    >>> tasks.option("task_weight", 0.5), tasks.option("task_weight", {"masks": 1, "diagnosis": 2})
    ((0.5, 0.5), (2, 1))
    >>> tasks.option("mode", ("hard", "soft"))
    Traceback (most recent call last):
    ...
    ValueError: mode=('hard', 'soft') must be one value, or a dict with one per task in ['diagnosis', 'masks'].
    """
    if self.single:
      return (value,)
    if getattr(value, "ndim", 0) == 1:
      if self.by_name or value.shape[0] != len(self.names):
        raise ValueError(f"{name} has {value.shape[0]} entries for tasks {list(self.names)}.")
      return tuple(value[k] for k in range(len(self.names)))
    if _is_shared(value):
      return (value,) * len(self.names)
    if not self.matches(value):
      form = f"a dict with one per task in {list(self.names)}" if self.by_name else (
          f"a tuple of {len(self.names)}, one per task")
      raise ValueError(f"{name}={value!r} must be one value, or {form}.")
    return self.split(value)


SINGLE_TASK = Tasks(names=("task",), by_name=False, single=True)


def metric_key(key: str, task: str, suffixed: bool) -> str:
  """The key a task's value is written under (results.json, metrics.jsonl, TensorBoard, the
  console, enhance.py's predictions.csv), the one place a task's name joins a metric's: ``key``
  itself for a run of the single-task form, ``key/<task>`` when ``suffixed`` (the multi-task form,
  the config's ``model.recognizers``, whatever the number of tasks; a combiner built for tasks).

  >>> metric_key("dice", "segmentation", False), metric_key("dice", "segmentation", True)
  ('dice', 'dice/segmentation')
  """
  return f"{key}/{task}" if suffixed else key


def _is_shared(value: Any) -> bool:
  """Whether an option value is one value for every task (not a per-task container)."""
  return not isinstance(value, (tuple, list, Mapping))


def resolve_tasks(tasks: TaskSpec = None, **options: Any) -> Tasks:
  """The tasks a combiner is built for, from ``tasks`` or else from its per-task options.

  Args:
    tasks: None (one task, unless an option is per-task), a number K of tasks (``task_grads`` a tuple
      of K trees), or the tasks' names (``task_grads`` a dict by name).
    **options: the combiner's options by name; a tuple/list or dict value is per-task.

  >>> resolve_tasks().single, resolve_tasks(2).names, resolve_tasks(["b", "a"]).names
  (True, ('0', '1'), ('a', 'b'))
  >>> resolve_tasks(task_weight={"masks": 1.0, "diagnosis": 0.3}).names
  ('diagnosis', 'masks')
  >>> resolve_tasks(2, threshold=(0.0, 0.1, 0.2))
  Traceback (most recent call last):
  ...
  ValueError: threshold=(0.0, 0.1, 0.2) must be one value, or a tuple of 2, one per task.
  """
  if tasks is None:
    per_task = {k: v for k, v in options.items() if not _is_shared(v)}
    if not per_task:
      return SINGLE_TASK
    name, value = next(iter(per_task.items()))
    tasks = list(value) if isinstance(value, Mapping) else len(value)
  if isinstance(tasks, int) and not isinstance(tasks, bool):
    if tasks < 1:
      raise ValueError(f"tasks must be >= 1, got {tasks}.")
    resolved = Tasks(names=tuple(str(k) for k in range(tasks)), by_name=False)
  elif isinstance(tasks, Sequence) and not isinstance(tasks, str) and tasks:
    names = [str(n) for n in tasks]
    if len(set(names)) != len(names):
      raise ValueError(f"task names must be distinct, got {list(tasks)}.")
    resolved = Tasks(names=tuple(sorted(names)), by_name=True)
  else:
    raise ValueError(f"tasks must be a number >= 1 or a sequence of task names, got {tasks!r}; "
                     "under inject_hyperparams, list it in static_args.")
  for name, value in options.items():
    resolved.option(name, value)   # raises for a per-task option that does not match the tasks
  return resolved


def check_task_weights(weights: Sequence[Any]) -> None:
  """Refuses a negative λ among the per-task ``weights`` (a traced one is the caller's to keep ≥ 0).

  >>> check_task_weights((1.0, -0.5))
  Traceback (most recent call last):
  ...
  ValueError: task_weight must be >= 0, got -0.5.
  """
  for weight in weights:
    if isinstance(weight, (int, float)) and weight < 0:
      raise ValueError(f"task_weight must be >= 0, got {weight}.")


def check_task_grads_form(tasks: Tasks, updates: Any, task_grads: Any, name: str) -> None:
  """A clear error when ``task_grads`` is not in the form the combiner was built for.

  >>> import jax.numpy as jnp
  >>> check_task_grads_form(SINGLE_TASK, jnp.zeros(2), (jnp.zeros(2), jnp.ones(2)), "gradprom")
  Traceback (most recent call last):
  ...
  ValueError: gradprom was built for one task, but task_grads is a tuple of 2 gradient trees: build it with tasks=2 (or per-task options) to combine several tasks.
  """
  if tasks.single:
    # Only a container of several trees like g_e is taken for several tasks; anything else gets the
    # plain structure error.
    if (not _is_shared(task_grads) and len(task_grads) > 1
        and jax.tree.structure(task_grads) != jax.tree.structure(updates)
        and all(jax.tree.structure(t) == jax.tree.structure(updates)
                for t in (task_grads.values() if isinstance(task_grads, Mapping) else task_grads))):
      form = (f"a dict of {len(task_grads)} gradient trees: build it with tasks={sorted(task_grads)}"
              if isinstance(task_grads, Mapping) else
              f"a tuple of {len(task_grads)} gradient trees: build it with tasks={len(task_grads)}")
      raise ValueError(f"{name} was built for one task, but task_grads is {form} "
                       "(or per-task options) to combine several tasks.")
    return
  if not tasks.matches(task_grads):
    form = (f"a dict of one gradient tree per task in {list(tasks.names)}" if tasks.by_name else
            f"a tuple of {len(tasks.names)} gradient trees, one per task")
    raise ValueError(f"{name} was built for tasks {list(tasks.names)}: task_grads must be {form}.")

