"""The combiners GradProm is compared with, with GradProm's call signature so a config swaps them by name.

Each takes the enhancement gradient g_e as ``updates`` and the task gradient g_t as the keyword-only
extra argument ``task_grads``, and keeps a :class:`CombinerState` (the cosine is measured and logged by
all of them, so runs of every method can be compared on the same plots). Each is only its combine
rule, built into a combiner by :func:`~gradprom_jax.core.combiners.skeleton.make_combiner`.

Like :func:`~gradprom_jax.core.combiners.gradprom.gradprom`, each combines several tasks when built with
``tasks=K`` (or names, or a per-task ``task_weight``): ``task_grads`` is then a tuple (or dict) of K
trees, each task's term is made from g_e and its own g_t,k, and the update is g_e plus their sum.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners import gradient_geometry as geometry
from gradprom_jax.core.combiners.skeleton import make_combiner
from gradprom_jax.core.combiners.tasks import PerTask, TaskSpec, resolve_tasks


def joint(task_weight: PerTask = 1.0, *,
          tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """Plain joint training: always ``g_e + task_weight · g_t`` (several tasks: ``g_e + Σ_k λ_k g_t,k``).

  The gradient of L_enh + λ L_task: the baseline of the GradProm paper's figure, and what task-driven
  enhancement models train with (e.g. ESTR, Liu et al. 2023). Its direction can point uphill for L_enh
  when ⟨g_e, g_t⟩ < -‖g_e‖²/λ.

  >>> import jax.numpy as jnp
  >>> tx = joint(task_weight=0.5)
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([-4.0, 2.0])
  >>> tx.update(g_e, tx.init(g_e), task_grads=g_t)[0]
  Array([-1.,  1.], dtype=float32)
  >>> two = joint(task_weight=(1.0, 0.5))
  >>> two.update(g_e, two.init(g_e), task_grads=(g_t, g_t))[0]
  Array([-5.,  3.], dtype=float32)
  """
  resolved = resolve_tasks(tasks, task_weight=task_weight)
  weights = resolved.option("task_weight", task_weight)

  def rule(updates, task_grads, count, task):
    del count
    term = jax.tree.map(lambda t: geometry.scaled(t, weights[task]), task_grads)
    return term, jnp.ones([], jnp.float32)

  return make_combiner("joint", rule, tasks=resolved)


def pcgrad(task_weight: PerTask = 1.0, *,
           tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """Gradient surgery: when λg_t conflicts with g_e, drop its component along g_e, then add it.

  PCGrad, Yu et al. 2020, "Gradient Surgery for Multi-Task Learning" (arXiv:2001.06782), in the
  asymmetric form for a main task and an auxiliary one: only the auxiliary gradient is projected,

      g_t' = g_t - min(0, ⟨g_t, g_e⟩) / ‖g_e‖² · g_e,     d = g_e + λ g_t'

  so ⟨d, g_e⟩ ≥ ‖g_e‖² as with GradProm, but the conflicting task gradient still contributes its
  component orthogonal to g_e. The state's ``gate`` is 1 when no projection was needed. With several
  tasks each g_t,k is projected against g_e alone (not against the other tasks), so each term has
  ⟨λ_k g_t,k', g_e⟩ ≥ 0 and the sum keeps ⟨d, g_e⟩ ≥ ‖g_e‖².

  >>> import jax.numpy as jnp
  >>> tx = pcgrad()
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([-1.0, 1.0])
  >>> tx.update(g_e, tx.init(g_e), task_grads=g_t)[0]
  Array([1., 1.], dtype=float32)
  """
  resolved = resolve_tasks(tasks, task_weight=task_weight)
  weights = resolved.option("task_weight", task_weight)

  def rule(updates, task_grads, count, task):
    del count
    coefficient = geometry.squared_norm_ratio_projection(
        jax.tree.leaves(task_grads), jax.tree.leaves(updates))
    # Project only a conflicting gradient (negative coefficient); an agreeing one is kept whole.
    removed = jnp.minimum(coefficient, 0.0)

    def term(e, t):
      projected = t.astype(jnp.float32) - removed * e.astype(jnp.float32)
      return geometry.scaled(projected, weights[task])

    no_conflict = (coefficient >= 0).astype(jnp.float32)
    return jax.tree.map(term, updates, task_grads), no_conflict

  return make_combiner("pcgrad", rule, tasks=resolved)


def random_gate(task_weight: PerTask = 1.0, open_rate: PerTask = 0.5, seed: int | jax.Array = 0,
                *, tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """A control for GradProm's gate: adds ``task_weight · g_t`` on a random fraction of the steps.

  The gate opens with probability ``open_rate`` whatever cos(g_e, g_t) is. Run at GradProm's logged
  gate-open rate, it separates *how often* the task gradient is added from *which* steps it is added
  on: if it ties GradProm, the cosine's choice of steps does not matter. It has no descent guarantee
  (an open gate adds λg_t even when it opposes g_e).

  The coin of update n is ``bernoulli(fold_in(key(seed), n), open_rate)`` with n the state's update
  count, so the sequence of gates is fixed by the seed and survives a checkpoint/resume unchanged,
  with no state beyond the :class:`CombinerState` every combiner keeps (whose cosine is logged).
  With several tasks, each task k has its own coin (see :func:`random_gate_coin`).

  Args:
    task_weight: λ, multiplying g_t when the gate is open (≥ 0); one, or one per task.
    open_rate: the probability that the gate opens at a step, in [0, 1]; one, or one per task.
    seed: seeds the coins (a run passes its ``config.seed``).
    tasks: the tasks combined (see :func:`~gradprom_jax.core.combiners.tasks.resolve_tasks`).

  >>> import jax.numpy as jnp
  >>> tx = random_gate(open_rate=0.5, seed=0)
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([-1.0, 1.0])
  >>> state, gates = tx.init(g_e), []
  >>> for _ in range(8):
  ...   out, state = tx.update(g_e, state, task_grads=g_t)
  ...   gates.append(int(state.gate))
  >>> set(gates) == {0, 1}, int(state.promoted) == sum(gates)
  (True, True)
  >>> random_gate(open_rate=1.5)
  Traceback (most recent call last):
  ...
  ValueError: open_rate must be in [0, 1], got 1.5.
  """
  resolved = resolve_tasks(tasks, task_weight=task_weight, open_rate=open_rate)
  weights = resolved.option("task_weight", task_weight)
  open_rates = resolved.option("open_rate", open_rate)
  for weight in weights:
    if isinstance(weight, (int, float)) and weight < 0:
      raise ValueError(f"task_weight must be >= 0, got {weight}.")
  for rate in open_rates:
    if isinstance(rate, (int, float)) and not 0 <= rate <= 1:
      raise ValueError(f"open_rate must be in [0, 1], got {rate}.")

  def rule(updates, task_grads, count, task):
    del updates
    gate = random_gate_coin(seed, count, open_rates[task], task).astype(jnp.float32)
    weight = gate * jnp.asarray(weights[task], jnp.float32)
    return jax.tree.map(lambda t: geometry.scaled(t, weight), task_grads), gate

  return make_combiner("random_gate", rule, tasks=resolved)


def random_gate_coin(seed: int | jax.Array, count: jax.Array, open_rate: float | jax.Array,
                     task: int = 0) -> jax.Array:
  """Whether :func:`random_gate` opens for task number ``task`` at update ``count`` (a bool scalar), a
  pure function of its arguments, so a resumed run draws the same coins. Task 0 draws the coins of a
  single-task run; task k > 0 folds k into the key, for a coin independent of the other tasks'.

  >>> import jax.numpy as jnp
  >>> bool(random_gate_coin(0, jnp.int32(3), 1.0)), bool(random_gate_coin(0, jnp.int32(3), 0.0))
  (True, False)
  """
  key = jax.random.fold_in(jax.random.key(seed), count)
  if task:
    key = jax.random.fold_in(key, task)
  return jax.random.bernoulli(key, jnp.asarray(open_rate, jnp.float32))


def enhance_only(*, tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """Enhancement-only training: returns g_e and ignores the task gradient (the recogniser never
  influences the enhancer). ``task_grads`` is optional; when given, its cosine with g_e is still logged
  (per task, when built with ``tasks``).

  >>> import jax.numpy as jnp
  >>> tx = enhance_only()
  >>> g_e = jnp.array([1.0, 0.0])
  >>> tx.update(g_e, tx.init(g_e), task_grads=-g_e)[0]
  Array([1., 0.], dtype=float32)
  """
  def rule(updates, task_grads, count, task):
    del updates, task_grads, count, task
    return None, jnp.zeros([], jnp.float32)

  return make_combiner("enhance_only", rule, needs_task_grads=False, tasks=resolve_tasks(tasks))
