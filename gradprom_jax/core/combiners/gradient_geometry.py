"""Inner products, norms and cosines of gradient pytrees, robust to scale, dtype and non-finite values.

Every combiner decides by the geometry of two gradients ``g_e`` (enhancement) and ``g_t`` (task). The
decision must not depend on the gradients' dtype or magnitude: bfloat16 gradients are upcast to float32,
and each tree is divided by its largest absolute entry before squaring, so gradients of 1e-30 (whose
squares underflow float32) still give the right cosine. A block whose cosine is undefined (a zero or
non-finite gradient) reports a cosine of 0. Every inner product runs at ``Precision.HIGHEST``: at the
default precision a TPU multiplies in bfloat16 passes and a recent GPU in TF32, so near cos = 0 the
gate's sign could differ between backends.

A *block* is the unit a decision is made on: the whole tree (``granularity="global"``, one cosine, as in
Du et al. 2018) or each array on its own (``granularity="per_leaf"``, one cosine per parameter array).
"""
from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

Granularity = Literal["global", "per_leaf"]
GRANULARITIES = ("global", "per_leaf")


def check_granularity(granularity: str) -> None:
  if granularity not in GRANULARITIES:
    raise ValueError(
        f"Unknown granularity {granularity!r}; expected one of {GRANULARITIES}.")


def _dot(x: jax.Array, y: jax.Array) -> jax.Array:
  """⟨x, y⟩ in full float32 on every backend (flattened, as ``jnp.vdot``)."""
  return jnp.vdot(x, y, precision=jax.lax.Precision.HIGHEST)


def _max_abs(leaves: list[jax.Array]) -> jax.Array:
  """The largest finite |entry| over ``leaves`` (float32 scalar; 0 for an empty or all-zero list)."""
  maxima = [jnp.max(jnp.abs(jnp.where(jnp.isfinite(x), x, 0)), initial=0.0).astype(jnp.float32)
            for x in leaves]
  return jnp.max(jnp.stack(maxima)) if maxima else jnp.zeros([], jnp.float32)


def _scale_and_rescaled(leaves: list[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
  """(s, ``leaves`` / s in float32) with s = their joint max |entry|, so squares cannot underflow."""
  scale = _max_abs(leaves)
  safe_scale = jnp.where(scale > 0, scale, 1.0)
  return scale, [x.astype(jnp.float32) / safe_scale for x in leaves]


def _rescaled(leaves: list[jax.Array]) -> list[jax.Array]:
  return _scale_and_rescaled(leaves)[1]


def _cosine_of_leaves(a: list[jax.Array], b: list[jax.Array]) -> jax.Array:
  a, b = _rescaled(a), _rescaled(b)
  dot = sum((_dot(x, y) for x, y in zip(a, b)), jnp.zeros([], jnp.float32))
  norm_a = jnp.sqrt(sum((_dot(x, x) for x in a), jnp.zeros([], jnp.float32)))
  norm_b = jnp.sqrt(sum((_dot(y, y) for y in b), jnp.zeros([], jnp.float32)))
  denominator = norm_a * norm_b
  defined = (denominator > 0) & jnp.isfinite(dot) & jnp.isfinite(denominator)
  cosine = dot / jnp.where(defined, denominator, 1.0)
  # Rounding can push |cos| a hair above 1; the clip keeps logged values in [-1, 1].
  return jnp.where(defined, jnp.clip(cosine, -1.0, 1.0), 0.0)


def cosine_similarity(a: Any, b: Any, granularity: Granularity = "global") -> Any:
  """Cosine similarity of two gradient trees, in float32, 0 where undefined.

  Args:
    a: a pytree of arrays.
    b: a pytree of arrays with the same structure and shapes as ``a``.
    granularity: ``"global"`` for one cosine over the flattened trees, ``"per_leaf"`` for a tree (with
      ``a``'s structure) of one cosine per leaf.

  Returns:
    A float32 scalar, or a pytree of float32 scalars for ``"per_leaf"``.

  >>> import jax.numpy as jnp
  >>> g_e = {"w": jnp.array([1.0, 0.0]), "b": jnp.array([1.0])}
  >>> g_t = {"w": jnp.array([0.0, 1.0]), "b": jnp.array([-1.0])}
  >>> print(f"{cosine_similarity(g_e, g_t):.3f}")
  -0.500
  >>> print({k: float(v) for k, v in cosine_similarity(g_e, g_t, "per_leaf").items()})
  {'b': -1.0, 'w': 0.0}
  """
  check_granularity(granularity)
  if granularity == "global":
    return _cosine_of_leaves(jax.tree.leaves(a), jax.tree.leaves(b))
  return jax.tree.map(lambda x, y: _cosine_of_leaves([x], [y]), a, b)


def rescaled_gram(trees: list[Any]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(Ĝ, s, finite) of n gradient trees: s_i the largest finite |entry| of tree i, Ĝ_ij =
  ⟨tree_i / s_i, tree_j / s_j⟩ (float32 (n, n), every product at ``Precision.HIGHEST``), and whether
  each tree is all finite. Each tree at unit max |entry|, no square under- or overflows whatever the
  trees' scales; ⟨tree_i, tree_j⟩ = s_i s_j Ĝ_ij.

  >>> import jax.numpy as jnp
  >>> gram, scale, finite = rescaled_gram([{"w": jnp.array([2.0, 0.0])}, {"w": jnp.array([1e-30, 1e-30])}])
  >>> gram, scale, finite
  (Array([[1., 1.],
         [1., 2.]], dtype=float32), Array([2.e+00, 1.e-30], dtype=float32), Array([ True,  True], dtype=bool))
  """
  scales, unit = zip(*(_scale_and_rescaled(jax.tree.leaves(tree)) for tree in trees))
  n = len(trees)
  dots = [[None] * n for _ in range(n)]
  for i in range(n):
    for j in range(i, n):
      dots[i][j] = dots[j][i] = sum((_dot(x, y) for x, y in zip(unit[i], unit[j])),
                                    jnp.zeros([], jnp.float32))
  finite = jnp.stack([is_finite(tree) for tree in trees])
  return jnp.stack([jnp.stack(row) for row in dots]), jnp.stack(scales), finite


def is_finite(tree: Any) -> jax.Array:
  """Whether every entry of ``tree`` is finite (a bool scalar; True for a tree without leaves).

  >>> import jax.numpy as jnp
  >>> bool(is_finite({"w": jnp.ones(2)})), bool(is_finite({"w": jnp.array([1.0, jnp.inf])}))
  (True, False)
  """
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
                           or [jnp.bool_(True)]))


def _norm_of_leaves(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """(s, ‖x/s‖) with s = max|x|: the norm ``s * ‖x/s‖`` without squares that under- or overflow."""
  scale, rescaled = _scale_and_rescaled(leaves)
  return scale, jnp.sqrt(sum((_dot(x, x) for x in rescaled), jnp.zeros([], jnp.float32)))


def _norm_ratio_of_leaves(a: list[jax.Array], b: list[jax.Array]) -> jax.Array:
  scale_a, norm_a = _norm_of_leaves(a)
  scale_b, norm_b = _norm_of_leaves(b)
  denominator = scale_b * norm_b
  ratio = (scale_a / jnp.where(denominator > 0, denominator, 1.0)) * norm_a
  defined = (denominator > 0) & jnp.isfinite(ratio)
  return jnp.where(defined, ratio, 0.0)


def norm_ratio(a: Any, b: Any, granularity: Granularity = "global") -> Any:
  """‖a‖ / ‖b‖ per block, in float32; 0 where undefined (‖b‖ = 0 or a non-finite entry).

  >>> import jax.numpy as jnp
  >>> a = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([0.0])}
  >>> b = {"w": jnp.array([1e-30, 0.0]), "b": jnp.array([0.0])}
  >>> print(f"{norm_ratio(a, b):.3g}")
  5e+30
  >>> print({k: f"{float(v):.3g}" for k, v in norm_ratio(a, b, "per_leaf").items()})
  {'b': '0', 'w': '5e+30'}
  """
  check_granularity(granularity)
  if granularity == "global":
    return _norm_ratio_of_leaves(jax.tree.leaves(a), jax.tree.leaves(b))
  return jax.tree.map(lambda x, y: _norm_ratio_of_leaves([x], [y]), a, b)


def squared_norm_ratio_projection(a: list[jax.Array], b: list[jax.Array]) -> jax.Array:
  """⟨a, b⟩ / ‖b‖² in float32 (0 where ‖b‖ = 0): the coefficient of ``a``'s projection onto ``b``.

  Computed as ⟨a, b̂⟩ / (s‖b̂‖²) with b̂ = b / s, s = max|b|, so tiny ``b`` does not underflow.
  """
  scale = _max_abs(b)
  safe_scale = jnp.where(scale > 0, scale, 1.0)
  b_hat = [y.astype(jnp.float32) / safe_scale for y in b]
  dot = sum((_dot(x.astype(jnp.float32), y) for x, y in zip(a, b_hat)), jnp.zeros([], jnp.float32))
  norm_sq = sum((_dot(y, y) for y in b_hat), jnp.zeros([], jnp.float32))
  defined = (norm_sq > 0) & jnp.isfinite(dot)
  return jnp.where(defined, dot / jnp.where(defined, norm_sq * safe_scale, 1.0), 0.0)


def scaled(t: jax.Array, weight: jax.Array) -> jax.Array:
  """``weight * t`` in float32; exactly 0 where ``weight == 0``, so a closed gate's term stays out.

  The ``where`` (rather than a multiply by 0) keeps a non-finite ``t`` out of a closed gate's output.

  >>> import jax.numpy as jnp
  >>> scaled(jnp.array([jnp.nan, 2.0]), jnp.float32(0.0)), scaled(jnp.array([1.0, 2.0]), 0.5)
  (Array([0., 0.], dtype=float32), Array([0.5, 1. ], dtype=float32))
  """
  weight = jnp.asarray(weight, jnp.float32)
  return jnp.where(weight != 0, weight * t.astype(jnp.float32), 0.0)


def add_terms(updates: Any, terms: list[Any]) -> Any:
  """``updates + Σ terms`` leaf by leaf, summed in float32 and cast back to each leaf's dtype.

  ``terms`` are trees with ``updates``' structure (float32 leaves, e.g. from :func:`scaled`), one per
  task; with none, ``updates`` itself is returned.

  >>> import jax.numpy as jnp
  >>> add_terms({"w": jnp.ones(2, jnp.bfloat16)}, [{"w": jnp.array([0.5, 0.0])}, {"w": jnp.ones(2)}])
  {'w': Array([2.5, 2], dtype=bfloat16)}
  """
  if not terms:
    return updates
  return jax.tree.map(lambda e, *ts: sum(ts, e.astype(jnp.float32)).astype(e.dtype), updates, *terms)
