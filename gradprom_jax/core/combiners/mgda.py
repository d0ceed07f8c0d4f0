"""MGDA: the minimum-norm point of the convex hull of the gradients (Sener & Koltun 2018).

Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018 (arXiv:1810.04650),
after Désidéri's multiple-gradient descent algorithm (2012). With g_1 = g_e and g_{k+1} = λ_k g_t,k:

    d = argmin { ‖Σ_i α_i g_i‖ : α_i ≥ 0, Σ_i α_i = 1 }

d is a common descent direction: ⟨d, g_i⟩ ≥ ‖d‖² for every i (the optimality condition of the
minimum-norm point), so a step along −d lowers every loss unless d = 0 (a Pareto-stationary point).
It is not rescaled: ‖d‖ ≤ min_i ‖g_i‖, and d shrinks to 0 as the gradients come to oppose each other.

**Solver: exact.** The minimum-norm point lies in the relative interior of one face of the simplex,
and on a face S the problem is an equality-constrained quadratic whose KKT system
[[G_S, 1], [1ᵀ, 0]] [α_S; −μ] = [0; 1] gives it exactly. Every one of the 2^(K+1) − 1 faces is solved
(one batched (K+2)×(K+2) solve inside jit) and the feasible point (α ≥ 0) of least norm is kept. Any
feasible α is a point of the hull, so a poorly conditioned face can never beat the true minimum, and the
single vertices are always feasible. For two gradients this is Sener & Koltun's closed form
α = clip(⟨g_2 − g_1, g_2⟩ / ‖g_1 − g_2‖², 0, 1). The cost, 2^(K+1) − 1 small systems, is negligible up
to about ten tasks (the gradients' Gram matrix, K + 1 passes over them, dominates); more are refused.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradprom_jax.core.combiners.gram_combiner import make_gram_combiner, matmul
from gradprom_jax.core.combiners.tasks import PerTask, TaskSpec, check_task_weights, resolve_tasks

# The largest number of tasks whose 2^(K+1) − 1 faces are enumerated (4095 systems of 13×13).
MAX_TASKS = 11


def faces(n: int) -> np.ndarray:
  """Every non-empty subset of ``range(n)`` as a bool (2^n − 1, n) NumPy array (static).

  >>> faces(2).astype(int).tolist()
  [[1, 0], [0, 1], [1, 1]]
  """
  return np.array([[(subset >> i) & 1 for i in range(n)] for subset in range(1, 2 ** n)], bool)


def min_norm_weights(gram: jax.Array, usable: jax.Array) -> jax.Array:
  """The weights α ∈ simplex (0 where not ``usable``) minimising αᵀ G α, exactly (see the module).

  >>> import jax.numpy as jnp
  >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])   # g_1 = (1, 0), g_2 = (0, 2)
  >>> min_norm_weights(gram, jnp.array([True, True]))
  Array([0.8, 0.2], dtype=float32)
  """
  n = gram.shape[0]
  members = jnp.asarray(faces(n))
  allowed = jnp.all(~members | usable[None, :], axis=1)   # faces of usable gradients only
  both = members[:, :, None] & members[:, None, :]
  # Non-members' rows read α_i = 0; members' rows G_S α − μ 1 = 0; the last row Σ α = 1.
  top = jnp.where(both, gram[None], jnp.where(jnp.eye(n, dtype=bool)[None] & ~members[:, :, None],
                                               1.0, 0.0))
  kkt = jnp.concatenate([
      jnp.concatenate([top, members[:, :, None].astype(jnp.float32)], axis=2),
      jnp.concatenate([members[:, None, :].astype(jnp.float32), jnp.zeros((len(members), 1, 1))],
                      axis=2)], axis=1)
  rhs = jnp.zeros((len(members), n + 1)).at[:, n].set(1.0)
  alpha = jnp.linalg.solve(kkt, rhs[..., None])[:, :n, 0]
  feasible = allowed & jnp.all(jnp.isfinite(alpha), axis=1) & jnp.all(alpha >= -1e-6, axis=1)
  alpha = jnp.where(feasible[:, None], jnp.clip(alpha, 0.0, None), 0.0)
  alpha = alpha / jnp.where(feasible, jnp.sum(alpha, axis=1), 1.0)[:, None]
  squared_norm = jnp.einsum("fi,fi->f", matmul(alpha, gram), alpha,
                            precision=jax.lax.Precision.HIGHEST)
  best = jnp.argmin(jnp.where(feasible & (jnp.sum(alpha, axis=1) > 0), squared_norm, jnp.inf))
  return alpha[best]


def mgda(task_weight: PerTask = 1.0, *,
         tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """MGDA: d = the minimum-norm point of the convex hull of g_e and λ_k g_t,k (Sener & Koltun 2018).

  Exact (the convex quadratic is solved face by face; see :mod:`~gradprom_jax.core.combiners.mgda`),
  the whole gradient tree as one vector, not rescaled. ``updates`` are g_e, ``task_grads`` g_t (one
  tree, or a tuple/dict of trees for ``tasks``); products in float32 at ``Precision.HIGHEST``, the
  output in the input dtype. A zero, non-finite or λ = 0 task gradient is left out of the hull; with
  none left (or g_e itself zero or non-finite) d = g_e. The state's ``gate`` is the coefficient of
  g_t,k in d (α_{k+1}·λ_k), its ``cosine`` cos(g_e, g_t,k).

  Args:
    task_weight: λ ≥ 0 scaling each task gradient before the hull is taken; one, or one per task.
    tasks: the tasks combined (see :func:`~gradprom_jax.core.combiners.tasks.resolve_tasks`).

  >>> import jax.numpy as jnp
  >>> tx = mgda()
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
  >>> d, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  >>> d, round(float(state.gate), 3)   # 0.8 g_e + 0.2 g_t: orthogonal to g_e − g_t
  (Array([0.8, 0.4], dtype=float32), 0.2)
  """
  resolved = resolve_tasks(tasks, task_weight=task_weight)
  if len(resolved.names) > MAX_TASKS:
    raise ValueError(f"mgda solves every face of the simplex exactly; {len(resolved.names)} tasks "
                     f"are more than the {MAX_TASKS} it enumerates.")
  weights = resolved.option("task_weight", task_weight)
  check_task_weights(weights)
  return make_gram_combiner("mgda", min_norm_weights, resolved, weights)
