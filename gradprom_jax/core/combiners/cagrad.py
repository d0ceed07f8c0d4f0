"""CAGrad: conflict-averse gradient descent (Liu et al. 2021).

Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS 2021
(arXiv:2110.14048). With g_1 = g_e, g_{k+1} = λ_k g_t,k and g₀ their mean, d maximises the worst
improvement min_i ⟨g_i, d⟩ within a ball around the average direction:

    d = argmax { min_i ⟨g_i, d⟩ : ‖d − g₀‖ ≤ c‖g₀‖ }

Its dual over the simplex, w* = argmin_w ⟨g_w, g₀⟩ + c‖g₀‖‖g_w‖ with g_w = Σ_i w_i g_i, gives
d = g₀ + c‖g₀‖ g_w*/‖g_w*‖ (``rescale=True`` divides it by 1 + c², as the authors' code does). c = 0 is
plain averaging (g₀); c → ∞ approaches MGDA's direction.

**Solver.** Along any segment of the simplex the dual is f(t) = δt + φ√(a t² + 2bt + q) (φ = c‖g₀‖),
whose minimum has a closed form (:func:`segment_minimum`). For two gradients the simplex is one
segment, so the dual is solved exactly. For more, pairwise exact minimisation (move weight from w_j to
w_i along e_i − e_j, every pair in turn, as SMO does) runs a fixed :data:`SWEEPS` sweeps inside jit;
this is coordinate descent on a convex function smooth except where g_w = 0, and the tests check its
value against brute force and SciPy.

**Degenerate case.** When 0 is in the hull of the gradients (possible only if they are linearly
dependent: exactly opposed, or more of them than dimensions) and c is large enough, the dual's minimum
is g_w* = 0 and d = g₀ + c‖g₀‖ g_w*/‖g_w*‖ is undefined (the authors' code adds 1e-4 under the root and
returns a direction of rounding noise). Here ‖g_w*‖ ≤ 10⁻⁴ of the largest ‖g_i‖ gives d = g₀, which
is then not the primal optimum (a point orthogonal to the gradients would be). Gradients of a network
with more parameters than tasks are linearly independent in practice.

A zero, non-finite or λ = 0 gradient is left out of the set (and of the mean); with no task gradient
left, d = g_e exactly. That is not the method's own limit: CAGrad's mean g₀ = (g_e + λg_t)/2 makes
d ≠ g_e as λ → 0 (for one task, d → g_e/2 + (c/2)‖g_e‖ ĝ_t), and CAGrad of g_e alone would be
(1 + c) g_e. λ = 0 (a task switched off) therefore means "this task is not there", as for every
combiner here.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradprom_jax.core.combiners.gram_combiner import make_gram_combiner, matmul
from gradprom_jax.core.combiners.tasks import PerTask, TaskSpec, check_task_weights, resolve_tasks

# Sweeps over all pairs of gradients for three or more (two need one: the solution is exact).
SWEEPS = 40
# ‖g_w*‖ at or below this fraction of the largest ‖g_i‖ is taken as 0 (the degenerate case, d = g₀):
# below it, float32 rounding would decide g_w*'s direction.
DEGENERATE_NORM = 1e-4


def segment_minimum(slope: jax.Array, weight: jax.Array, a: jax.Array, b: jax.Array, q: jax.Array,
                    low: jax.Array, high: jax.Array) -> jax.Array:
  """The t ∈ [low, high] minimising f(t) = slope·t + weight·√(a t² + 2bt + q), in closed form.

  With a > 0 write a t² + 2bt + q = a((t − t₀)² + h²), t₀ = −b/a. f is convex, and f'(t) = 0 where
  (t − t₀)/√((t − t₀)² + h²) = σ = −slope/(weight·√a): t = t₀ + hσ/√(1 − σ²) when |σ| < 1 (the kink t₀
  itself when h = 0); otherwise f is monotone and the minimum is at an end. ``weight`` ≥ 0.

  >>> import jax.numpy as jnp
  >>> f = lambda t: 0.3 * t + jnp.sqrt(2.0 * t * t - 2.0 * t + 1.0)
  >>> t = segment_minimum(0.3, 1.0, 2.0, -1.0, 1.0, 0.0, 1.0)
  >>> grid = jnp.linspace(0.0, 1.0, 10001)
  >>> round(float(t), 3), round(float(grid[jnp.argmin(f(grid))]), 3)
  (0.391, 0.391)
  """
  slope, weight, a, b, q, low, high = (jnp.asarray(x, jnp.float32)
                                       for x in (slope, weight, a, b, q, low, high))
  curved = (a > 0) & (weight > 0)
  safe_a = jnp.where(curved, a, 1.0)
  t0 = -b / safe_a
  h = jnp.sqrt(jnp.maximum(q / safe_a - t0 * t0, 0.0))
  sigma = -slope / jnp.where(curved, weight * jnp.sqrt(safe_a), 1.0)
  inside = jnp.abs(sigma) < 1.0
  stationary = t0 + h * sigma / jnp.sqrt(jnp.where(inside, 1.0 - sigma * sigma, 1.0))
  # Monotone (no stationary point, or a straight line): the end that f decreases towards.
  end = jnp.where(curved, jnp.where(sigma > 0, high, low), jnp.where(slope < 0, high, low))
  t = jnp.clip(jnp.where(curved & inside, stationary, end), low, high)
  return jnp.where(jnp.isfinite(t), t, low)   # no move rather than NaN, should the inputs overflow


def dual_weights(gram: jax.Array, mean: jax.Array, c: float | jax.Array, usable: jax.Array,
                 sweeps: int = SWEEPS) -> jax.Array:
  """w* ∈ simplex (0 where not ``usable``) minimising wᵀGm + c√(mᵀGm)·√(wᵀGw) (see the module).

  ``gram`` G of the gradients, ``mean`` m the weights of g₀ (so Gm = ⟨g_i, g₀⟩); starts from w = m.

  >>> import jax.numpy as jnp
  >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])   # g_1 = (1, 0), g_2 = (0, 2): g₀ = (0.5, 1)
  >>> dual_weights(gram, jnp.array([0.5, 0.5]), 0.0, jnp.array([True, True]))   # c = 0: min ⟨g_w, g₀⟩
  Array([1., 0.], dtype=float32)
  """
  n = gram.shape[0]
  pairs = jnp.asarray(np.array(list(itertools.combinations(range(n), 2)), np.int32).reshape(-1, 2))
  to_mean = matmul(gram, mean)
  weight = jnp.asarray(c, jnp.float32) * jnp.sqrt(jnp.maximum(jnp.dot(mean, to_mean), 0.0))

  def step(k, w):
    i, j = pairs[k % len(pairs), 0], pairs[k % len(pairs), 1]
    to_w = matmul(gram, w)
    a = gram[i, i] + gram[j, j] - 2.0 * gram[i, j]
    t = segment_minimum(to_mean[i] - to_mean[j], weight, a, to_w[i] - to_w[j],
                        jnp.maximum(jnp.dot(w, to_w), 0.0), -w[i], w[j])
    t = jnp.where(usable[i] & usable[j], t, 0.0)
    return w.at[i].add(t).at[j].add(-t)

  steps = len(pairs) * (1 if n == 2 else sweeps)
  return jax.lax.fori_loop(0, steps, step, mean) if len(pairs) else mean


def cagrad_weights(gram: jax.Array, usable: jax.Array, c: float | jax.Array,
                   rescale: bool) -> jax.Array:
  """α with d = Σ α_i g_i the CAGrad direction of the ``usable`` gradients whose Gram matrix is ``gram``.

  >>> import jax.numpy as jnp
  >>> gram = jnp.array([[1.0, -0.5], [-0.5, 1.0]])   # two unit gradients at 120°
  >>> cagrad_weights(gram, jnp.array([True, True]), 0.0, False)   # c = 0: the mean
  Array([0.5, 0.5], dtype=float32)
  """
  mean = usable / jnp.maximum(jnp.sum(usable), 1)
  w = dual_weights(gram, mean, c, usable)
  w_norm = jnp.sqrt(jnp.maximum(jnp.dot(w, matmul(gram, w)), 0.0))
  mean_norm = jnp.sqrt(jnp.maximum(jnp.dot(mean, matmul(gram, mean)), 0.0))
  defined = w_norm > DEGENERATE_NORM
  step = jnp.asarray(c, jnp.float32) * mean_norm / jnp.where(defined, w_norm, 1.0)
  alpha = mean + jnp.where(defined, step, 0.0) * w
  return alpha / (1.0 + jnp.asarray(c, jnp.float32) ** 2) if rescale else alpha


def cagrad(task_weight: PerTask = 1.0, c: float | jax.Array = 0.4, *, rescale: bool = False,
           tasks: TaskSpec = None) -> optax.GradientTransformationExtraArgs:
  """CAGrad: the d maximising min_i ⟨g_i, d⟩ over ‖d − g₀‖ ≤ c‖g₀‖ (Liu et al. 2021).

  g_i are g_e and λ_k g_t,k, g₀ their mean; solved exactly for one task, with a fixed-iteration
  pairwise solver for several (see :mod:`~gradprom_jax.core.combiners.cagrad`), the whole tree as one
  vector. ``updates`` are g_e, ``task_grads`` g_t (one tree, or a tuple/dict of trees for ``tasks``);
  products in float32 at ``Precision.HIGHEST``, the output in the input dtype. A zero, non-finite or
  λ = 0 task gradient is left out; with none left (or g_e itself zero or non-finite) d = g_e. The
  state's ``gate`` is the coefficient of g_t,k in d, its ``cosine`` cos(g_e, g_t,k).

  Args:
    task_weight: λ ≥ 0 scaling each task gradient; one, or one per task.
    c: the radius of the ball around g₀, relative to ‖g₀‖ (≥ 0; the authors use 0.4 or 0.5).
    rescale: divide d by 1 + c² (the authors' ``rescale=1``), so its scale stays near g₀'s. A Python
      bool: under ``optax.inject_hyperparams``, list it (and ``tasks``) in ``static_args``.
    tasks: the tasks combined (see :func:`~gradprom_jax.core.combiners.tasks.resolve_tasks`).

  >>> import jax.numpy as jnp
  >>> tx = cagrad(c=0.5)
  >>> g_e, g_t = jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])
  >>> d, state = tx.update(g_e, tx.init(g_e), task_grads=g_t)   # (1 + c) g₀: both improve alike
  >>> d, round(float(state.gate), 3)
  (Array([0.75, 0.75], dtype=float32), 0.75)
  >>> tx = cagrad(c=0.5, rescale=True)
  >>> tx.update(g_e, tx.init(g_e), task_grads=g_t)[0]   # divided by 1 + c²
  Array([0.6, 0.6], dtype=float32)
  """
  if isinstance(c, (int, float)) and c < 0:
    raise ValueError(f"c must be >= 0, got {c}.")
  resolved = resolve_tasks(tasks, task_weight=task_weight)
  weights = resolved.option("task_weight", task_weight)
  check_task_weights(weights)
  return make_gram_combiner(
      "cagrad", lambda gram, usable: cagrad_weights(gram, usable, c, rescale), resolved, weights)
