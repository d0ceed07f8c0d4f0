"""The skeleton of a combiner that weighs all gradients at once from their Gram matrix.

MGDA, CAGrad and IMTL-G do not make one term per task against g_e (as
:func:`~gradprom_jax.core.combiners.skeleton.make_combiner` does): each solves one small problem over
the set g_1 = g_e, g_{k+1} = λ_k g_t,k and returns d = Σ_i α_i g_i. Everything such a method needs
from the (huge) gradient trees is their (K+1)×(K+1) Gram matrix, so a method here is only its
``solve(gram, usable) -> α``; :func:`make_gram_combiner` does the rest:

* each tree is divided by its own largest |entry| before any product (so bfloat16, 1e-30 or 1e30
  gradients give the same weights), products in float32 at ``Precision.HIGHEST``; the Gram matrix is
  then scaled so that its largest diagonal entry is 1 (every method here is scale-free: scaling all
  gradients together scales d alike and leaves α unchanged);
* a gradient that is zero, non-finite, weighted by λ = 0, or so small next to the largest that its
  squared norm underflows (below ~1e-19 of it) is not *usable*: it is left out of the problem (α = 0);
  when g_e or every task gradient is left out, d = g_e exactly;
* d = Σ α_i g_i is summed in float32 and cast back to each leaf's dtype;
* each task keeps a :class:`~gradprom_jax.core.combiners.state.CombinerState` whose ``cosine`` is
  cos(g_e, g_t,k) (logged as by every combiner) and whose ``gate`` is the coefficient of g_t,k in d,
  α_{k+1}·λ_k (``promoted`` counts the updates where it was > 0).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners import gradient_geometry as geometry
from gradprom_jax.core.combiners.accumulation import check_not_in_optax_multisteps
from gradprom_jax.core.combiners.skeleton import check_task_grads
from gradprom_jax.core.combiners.state import init_combiner_state, next_combiner_state
from gradprom_jax.core.combiners.tasks import Tasks

# (gram, usable) -> α: the weights of the gradients (g_e first), float32 of shape (K+1,), 0 where not
# usable. ``gram`` is float32 (K+1, K+1) with the rows and columns of unusable gradients zero.
SolveWeights = Callable[[jax.Array, jax.Array], jax.Array]


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """``a @ b`` in full float32 on every backend (the solvers' small products)."""
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


class GradientGram(NamedTuple):
  """The geometry of a set of gradient trees, all a method needs to weigh them.

  Attributes:
    gram: float32 (n, n), ⟨g_i, g_j⟩ divided by the largest usable ‖g_i‖²; 0 in every row and column
      of an unusable gradient.
    usable: bool (n,), which gradients take part (finite, non-zero, positive weight).
    cosine: float32 (n,), cos(g_1, g_i) (g_1 = g_e; 0 where undefined, whatever the weights).
  """
  gram: jax.Array
  usable: jax.Array
  cosine: jax.Array


def gradient_gram(trees: Sequence[Any], weights: Sequence[Any]) -> GradientGram:
  """The :class:`GradientGram` of ``weights[i] * trees[i]`` (trees of one structure, any float dtype).

  >>> import jax.numpy as jnp
  >>> g = gradient_gram([jnp.array([2.0, 0.0]), jnp.array([0.0, 1e-30]), jnp.array([jnp.nan, 1.0])],
  ...                   [1.0, 2e30, 1.0])
  >>> g.gram, g.usable, g.cosine
  (Array([[1., 0., 0.],
         [0., 1., 0.],
         [0., 0., 0.]], dtype=float32), Array([ True,  True, False], dtype=bool), Array([1., 0., 0.], dtype=float32))
  """
  rescaled_gram, scales, finite = geometry.rescaled_gram(list(trees))
  weights = jnp.stack([jnp.asarray(w, jnp.float32) for w in weights])
  magnitude = weights * scales   # the max |entry| of weights[i] * trees[i]
  usable = finite & (magnitude > 0) & jnp.isfinite(magnitude) & (jnp.diagonal(rescaled_gram) > 0)
  relative = jnp.where(usable, magnitude, 0.0)
  relative = relative / jnp.where(jnp.max(relative) > 0, jnp.max(relative), 1.0)
  gram = jnp.where(usable[:, None] & usable[None, :],
                   relative[:, None] * relative[None, :] * rescaled_gram, 0.0)
  usable = usable & (jnp.diagonal(gram) > 0)   # a norm that underflows next to the largest counts as 0
  gram = jnp.where(usable[:, None] & usable[None, :], gram, 0.0)
  gram = gram / jnp.where(jnp.max(jnp.diagonal(gram)) > 0, jnp.max(jnp.diagonal(gram)), 1.0)
  cosine_defined = finite & finite[0] & (jnp.diagonal(rescaled_gram) > 0) & (rescaled_gram[0, 0] > 0)
  denominator = jnp.sqrt(jnp.where(cosine_defined, rescaled_gram[0, 0] * jnp.diagonal(rescaled_gram),
                                   1.0))
  cosine = jnp.where(cosine_defined, jnp.clip(rescaled_gram[0] / denominator, -1.0, 1.0), 0.0)
  return GradientGram(gram, usable, cosine)


def combine(trees: Sequence[Any], coefficients: jax.Array) -> Any:
  """Σ_i coefficients[i] · trees[i], summed in float32, in the first tree's structure and dtypes.

  A zero coefficient leaves its tree out exactly (its NaNs too): coefficients (1, 0, ...) return the
  first tree's values unchanged.

  >>> import jax.numpy as jnp
  >>> trees = [{"w": jnp.ones(2, jnp.bfloat16)}, {"w": jnp.array([jnp.nan, 2.0])}]
  >>> combine(trees, jnp.array([1.0, 0.0])), combine(trees, jnp.array([0.5, 0.25]))
  ({'w': Array([1, 1], dtype=bfloat16)}, {'w': Array([nan, 1], dtype=bfloat16)})
  """
  def leaf(*xs):
    total = sum((geometry.scaled(x, coefficients[i]) for i, x in enumerate(xs)),
                jnp.zeros(xs[0].shape, jnp.float32))
    return total.astype(xs[0].dtype)
  return jax.tree.map(leaf, *trees)


def make_gram_combiner(name: str, solve: SolveWeights, tasks: Tasks,
                       weights: Sequence[Any]) -> optax.GradientTransformationExtraArgs:
  """A combiner called ``name`` whose update is Σ α_i g_i, α = ``solve`` on the gradients' Gram matrix.

  Args:
    name: the method's name, shown in errors.
    solve: ``solve(gram, usable) -> α`` (see :data:`SolveWeights`); it sees at least one usable task
      gradient and a usable g_e (else d = g_e without asking it).
    tasks: the tasks it combines (see :func:`~gradprom_jax.core.combiners.tasks.resolve_tasks`).
    weights: λ_k per task (in ``tasks.names`` order).

  >>> import jax.numpy as jnp
  >>> from gradprom_jax.core.combiners.tasks import SINGLE_TASK
  >>> mean = make_gram_combiner("mean", lambda gram, usable: usable / usable.sum(), SINGLE_TASK, [1.0])
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([0.0, 2.0])
  >>> update, state = mean.update(g_e, mean.init(g_e), task_grads=g_t)
  >>> update, float(state.gate), float(state.cosine)
  (Array([0.5, 1. ], dtype=float32), 0.5, 0.0)
  >>> mean.update(g_e, mean.init(g_e), task_grads=jnp.zeros(2))[0]   # nothing to weigh: g_e
  Array([1., 0.], dtype=float32)
  """
  def init_fn(params):
    return tasks.join_states([init_combiner_state(params) for _ in tasks.names])

  def update_fn(updates, state, params=None, *, task_grads=None, **extra_args):
    del params, extra_args
    check_not_in_optax_multisteps(name)
    check_task_grads(updates, task_grads, name, tasks)
    trees = (updates,) + tasks.split(task_grads)
    gradient_weights = [1.0] + list(weights)
    geometry_of_set = gradient_gram(trees, gradient_weights)
    usable = geometry_of_set.usable
    with jax.default_matmul_precision("highest"):
      alpha = solve(geometry_of_set.gram, usable)
    solvable = usable[0] & jnp.any(usable[1:])
    alpha = jnp.where(solvable & usable & jnp.isfinite(alpha), alpha, 0.0)
    alpha = jnp.where(solvable, alpha, jnp.zeros_like(alpha).at[0].set(1.0))
    # λ multiplies only a weight in use: a λ of NaN on a left-out task must not leak into d.
    coefficients = jnp.where(alpha != 0, alpha * jnp.stack(
        [jnp.asarray(w, jnp.float32) for w in gradient_weights]), 0.0)
    new_states = [next_combiner_state(task_state, geometry_of_set.cosine[k + 1], coefficients[k + 1])
                  for k, task_state in enumerate(tasks.split_states(state))]
    return combine(trees, coefficients), tasks.join_states(new_states)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
