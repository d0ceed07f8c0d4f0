"""IMTL-G: the combination with equal projections on every task's unit gradient (Liu et al. 2021).

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial Multi-task Learning", ICLR 2021 (the
gradient half, IMTL-G). With g_1 = g_e, g_{k+1} = λ_k g_t,k and u_i = g_i/‖g_i‖, d = Σ_i α_i g_i with
Σ_i α_i = 1 and ⟨d, u_1⟩ = ⟨d, u_i⟩ for every i: no gradient's direction is favoured, whatever the
gradients' norms. In closed form, with D the rows g_1 − g_i and U the rows u_1 − u_i (i = 2..K+1),

    α_{2:K+1} = g_1 Uᵀ (D Uᵀ)⁻¹,    α_1 = 1 − Σ_{i≥2} α_i

For two gradients this is d = (‖g_2‖ g_1 + ‖g_1‖ g_2)/(‖g_1‖ + ‖g_2‖) = (‖g_1‖‖g_2‖/(‖g_1‖ + ‖g_2‖))
(u_1 + u_2): along the bisector of the two directions. The α are not constrained to be ≥ 0 (the paper's
are not), and d can be small or 0 (two opposed gradients give d = 0).

**Singular systems.** D Uᵀ is singular when some u_i = u_1 (a task gradient parallel to g_e: every α
then gives equal projections) or, for three or more, when the unit gradients are affinely dependent.
It is solved with a pseudo-inverse cut at a relative 1e-5 of its largest singular value: the
undetermined weights get the least-norm choice (for a gradient parallel to g_e, α = 0: d = g_e).
A zero, non-finite or λ = 0 task gradient is left out (α = 0); with none left, d = g_e exactly.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners.gram_combiner import make_gram_combiner, matmul
from gradprom_jax.core.combiners.tasks import PerTask, TaskSpec, check_task_weights, resolve_tasks

# Singular values of D Uᵀ below this fraction of the largest are taken as 0 (see the module).
RELATIVE_CUTOFF = 1e-5


def impartial_weights(gram: jax.Array, usable: jax.Array) -> jax.Array:
  """α (summing to 1, 0 where not ``usable``) whose Σ α_i g_i projects equally on every u_i.

  ``gram`` is the Gram matrix of the gradients, g_1 (= g_e) first; every product of D, U and g_1 is
  read from it (⟨g_i, u_j⟩ = G_ij/√G_jj).

  >>> import jax.numpy as jnp
  >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])   # g_1 = (1, 0), g_2 = (0, 2)
  >>> impartial_weights(gram, jnp.array([True, True]))   # d = (2/3, 2/3)
  Array([0.6666666 , 0.33333334], dtype=float32)
  """
  norms = jnp.sqrt(jnp.diagonal(gram))
  along_unit = gram / jnp.where(usable & (norms > 0), norms, 1.0)[None, :]   # [i, j] = ⟨g_i, u_j⟩
  # ⟨g_1 − g_i, u_1 − u_j⟩ and ⟨g_1, u_1 − u_j⟩ for the task gradients i, j ≥ 2.
  rhs = along_unit[0, 0] - along_unit[0, 1:]
  system = (along_unit[0, 0] - along_unit[0, 1:][None, :] - along_unit[1:, 0][:, None]
            + along_unit[1:, 1:])
  # A left-out task reads α_i = 0: its row and column are the identity's, its right-hand side 0.
  tasks_usable = usable[1:]
  both = tasks_usable[:, None] & tasks_usable[None, :]
  scale = jnp.max(jnp.abs(jnp.where(both, system, 0.0)))
  system = jnp.where(both, system, jnp.where(jnp.eye(len(rhs), dtype=bool),
                                             jnp.where(scale > 0, scale, 1.0), 0.0))
  rhs = jnp.where(tasks_usable, rhs, 0.0)
  # α_{2:} D Uᵀ = g_1 Uᵀ, a row-vector system: (D Uᵀ)ᵀ α_{2:}ᵀ = (g_1 Uᵀ)ᵀ.
  task_alpha = matmul(jnp.linalg.pinv(system.T, rtol=RELATIVE_CUTOFF), rhs)
  task_alpha = jnp.where(tasks_usable, task_alpha, 0.0)
  return jnp.concatenate([1.0 - jnp.sum(task_alpha, keepdims=True), task_alpha])


def imtl_g(task_weight: PerTask = 1.0, *,
           tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """IMTL-G: d = Σ α_i g_i, Σ α_i = 1, with equal projections on every unit gradient (Liu et al. 2021).

  g_i are g_e and λ_k g_t,k; closed form, the whole tree as one vector (see
  :mod:`~gradprom_jax.core.combiners.imtl_g`). ``updates`` are g_e, ``task_grads`` g_t (one tree, or a
  tuple/dict of trees for ``tasks``); products in float32 at ``Precision.HIGHEST``, the output in the
  input dtype. A zero, non-finite or λ = 0 task gradient is left out; with none left (or g_e itself
  zero or non-finite) d = g_e. The state's ``gate`` is the coefficient of g_t,k in d (α_{k+1}·λ_k),
  its ``cosine`` cos(g_e, g_t,k). λ only scales g_t,k before the combination: IMTL-G's d depends on
  the norms, so it changes d, but not the equal-projection property.

  Args:
    task_weight: λ ≥ 0 scaling each task gradient; one, or one per task.
    tasks: the tasks combined (see :func:`~gradprom_jax.core.combiners.tasks.resolve_tasks`).

  >>> import jax.numpy as jnp
  >>> tx = imtl_g()
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
  >>> d, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)
  >>> d, round(float(state.gate), 3)   # ⟨d, u_e⟩ = ⟨d, u_t⟩ = 2/3
  (Array([0.6666666, 0.6666667], dtype=float32), 0.333)
  """
  resolved = resolve_tasks(tasks, task_weight=task_weight)
  weights = resolved.option("task_weight", task_weight)
  check_task_weights(weights)
  return make_gram_combiner("imtl_g", impartial_weights, resolved, weights)
