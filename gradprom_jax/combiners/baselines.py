"""The combiners GradProm is compared with, with GradProm's call signature so a config swaps them by name.

Each takes the enhancement gradient g_e as ``updates`` and the task gradient g_t as the keyword-only
extra argument ``task_grads``, and keeps a :class:`CombinerState` (the cosine is measured and logged by
all of them, so runs of every method can be compared on the same plots). Each is only its combine
rule, built into a combiner by :func:`~gradprom_jax.combiners.skeleton.make_combiner`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.combiners import gradient_geometry as geometry
from gradprom_jax.combiners.skeleton import make_combiner


def joint(task_weight: float | jax.Array = 1.0) -> optax.GradientTransformationExtraArgs:
  """Plain joint training: always ``g_e + task_weight · g_t``.

  The gradient of L_enh + λ L_task: the baseline of the GradProm paper's figure, and what task-driven
  enhancement models train with (e.g. ESTR, Liu et al. 2023). Its direction can point uphill for L_enh
  when ⟨g_e, g_t⟩ < -‖g_e‖²/λ.

  >>> import jax.numpy as jnp
  >>> tx = joint(task_weight=0.5)
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([-4.0, 2.0])
  >>> tx.update(g_e, tx.init(g_e), task_grads=g_t)[0]
  Array([-1.,  1.], dtype=float32)
  """
  def rule(updates, task_grads, count):
    del count
    weight = jnp.asarray(task_weight, jnp.float32)
    combined = jax.tree.map(lambda e, t: geometry.add_scaled(e, t, weight), updates, task_grads)
    return combined, jnp.ones([], jnp.float32)

  return make_combiner("joint", rule)


def pcgrad(task_weight: float | jax.Array = 1.0) -> optax.GradientTransformationExtraArgs:
  """Gradient surgery: when λg_t conflicts with g_e, drop its component along g_e, then add it.

  PCGrad, Yu et al. 2020, "Gradient Surgery for Multi-Task Learning" (arXiv:2001.06782), in the
  asymmetric form for a main task and an auxiliary one: only the auxiliary gradient is projected,

      g_t' = g_t - min(0, ⟨g_t, g_e⟩) / ‖g_e‖² · g_e,     d = g_e + λ g_t'

  so ⟨d, g_e⟩ ≥ ‖g_e‖² as with GradProm, but the conflicting task gradient still contributes its
  component orthogonal to g_e. The state's ``gate`` is 1 when no projection was needed.

  >>> import jax.numpy as jnp
  >>> tx = pcgrad()
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([-1.0, 1.0])
  >>> tx.update(g_e, tx.init(g_e), task_grads=g_t)[0]
  Array([1., 1.], dtype=float32)
  """
  def rule(updates, task_grads, count):
    del count
    coefficient = geometry.squared_norm_ratio_projection(
        jax.tree.leaves(task_grads), jax.tree.leaves(updates))
    # Project only a conflicting gradient (negative coefficient); an agreeing one is kept whole.
    removed = jnp.minimum(coefficient, 0.0)
    weight = jnp.asarray(task_weight, jnp.float32)

    def combine(e, t):
      e32, t32 = e.astype(jnp.float32), t.astype(jnp.float32)
      projected = t32 - removed * e32
      return geometry.add_scaled(e32, projected, weight).astype(e.dtype)

    no_conflict = (coefficient >= 0).astype(jnp.float32)
    return jax.tree.map(combine, updates, task_grads), no_conflict

  return make_combiner("pcgrad", rule)


def random_gate(task_weight: float | jax.Array = 1.0, open_rate: float | jax.Array = 0.5,
                seed: int | jax.Array = 0) -> optax.GradientTransformationExtraArgs:
  """A control for GradProm's gate: adds ``task_weight · g_t`` on a random fraction of the steps.

  The gate opens with probability ``open_rate`` whatever cos(g_e, g_t) is. Run at GradProm's logged
  gate-open rate, it separates *how often* the task gradient is added from *which* steps it is added
  on: if it ties GradProm, the cosine's choice of steps does not matter. It has no descent guarantee
  (an open gate adds λg_t even when it opposes g_e).

  The coin of update n is ``bernoulli(fold_in(key(seed), n), open_rate)`` with n the state's update
  count, so the sequence of gates is fixed by the seed and survives a checkpoint/resume unchanged,
  with no state beyond the :class:`CombinerState` every combiner keeps (whose cosine is logged).

  Args:
    task_weight: λ, multiplying g_t when the gate is open (≥ 0).
    open_rate: the probability that the gate opens at a step, in [0, 1].
    seed: seeds the coins (a run passes its ``config.seed``).

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
  if isinstance(task_weight, (int, float)) and task_weight < 0:
    raise ValueError(f"task_weight must be >= 0, got {task_weight}.")
  if isinstance(open_rate, (int, float)) and not 0 <= open_rate <= 1:
    raise ValueError(f"open_rate must be in [0, 1], got {open_rate}.")

  def rule(updates, task_grads, count):
    gate = random_gate_coin(seed, count, open_rate).astype(jnp.float32)
    weight = gate * jnp.asarray(task_weight, jnp.float32)
    combined = jax.tree.map(lambda e, t: geometry.add_scaled(e, t, weight), updates, task_grads)
    return combined, gate

  return make_combiner("random_gate", rule)


def random_gate_coin(seed: int | jax.Array, count: jax.Array,
                     open_rate: float | jax.Array) -> jax.Array:
  """Whether :func:`random_gate` opens at update ``count`` (a bool scalar), a pure function of its
  arguments, so a resumed run draws the same coins.

  >>> import jax.numpy as jnp
  >>> bool(random_gate_coin(0, jnp.int32(3), 1.0)), bool(random_gate_coin(0, jnp.int32(3), 0.0))
  (True, False)
  """
  key = jax.random.fold_in(jax.random.key(seed), count)
  return jax.random.bernoulli(key, jnp.asarray(open_rate, jnp.float32))


def enhance_only() -> optax.GradientTransformationExtraArgs:
  """Enhancement-only training: returns g_e and ignores the task gradient (the recogniser never
  influences the enhancer). ``task_grads`` is optional; when given, its cosine with g_e is still logged.

  >>> import jax.numpy as jnp
  >>> tx = enhance_only()
  >>> g_e = jnp.array([1.0, 0.0])
  >>> tx.update(g_e, tx.init(g_e), task_grads=-g_e)[0]
  Array([1., 0.], dtype=float32)
  """
  def rule(updates, task_grads, count):
    del task_grads, count
    return updates, jnp.zeros([], jnp.float32)

  return make_combiner("enhance_only", rule, needs_task_grads=False)
