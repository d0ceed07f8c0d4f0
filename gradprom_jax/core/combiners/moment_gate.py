"""GradProm's gate on the gradients' moving averages: open only where averaged g_e and g_t agree.

At small batches the per-step cos(g_e, g_t) that GradProm reads is mostly noise. Averaging the
*gradients* before taking the cosine (``gradprom(gradient_ema=β)``) averages the noise out of the
signal the gate decides on:

    m_e ← β m_e + (1 − β) g_e,    m_t ← β m_t + (1 − β) g_t,
    gate = w(cos(g_e, g_t)) · 1[cos(m_e, m_t) > τ]

with w GradProm's per-step gate (hard or soft). The moment cosine only closes gates the step would
open, so every step keeps ⟨d, g_e⟩ ≥ ‖g_e‖² (for τ ≥ 0) in every block.

**Not bias-corrected, on purpose.** Both moments start at 0 and share Adam's correction factor
1/(1 − β^t); a cosine is invariant to a common positive scale, so the corrected and uncorrected
moments give the same cosine, and so the same gate. Storing them uncorrected (as
``optax.ema(debias=False)``) needs no step count and no division; the cosine helpers rescale by the
largest entry, so the small early moments do not underflow.

**Own moments, not the optimiser's.** Adam's first moment is an average of the *combined* update d
(after the gate), not of g_e and of g_t apart, so it cannot give cos(m_e, m_t); and the combiner runs
before the optimiser in the chain, which in optax sees neither a later member's state nor can share it
while staying a pure ``GradientTransformation``. So the combiner keeps its own two moments.

**Memory:** two float32 copies of the enhancer's gradient tree per task (``2K`` for K tasks: each
task's state is self-contained), beside the optimiser's own moments.

After five conflicting steps an agreeing one is refused: its own cosine is positive, the averages'
is not.

>>> import jax.numpy as jnp
>>> from gradprom_jax import gradprom
>>> tx, g_e = gradprom(gradient_ema=0.9), jnp.array([1.0, 0.0])
>>> state = tx.init(g_e)
>>> for _ in range(5):
...   _, state = tx.update(g_e, state, task_grads=jnp.array([-1.0, 0.5]))
>>> update, state = tx.update(g_e, state, task_grads=jnp.array([1.0, 1.0]))
>>> update, round(float(state.combiner.cosine), 3), round(float(state.moment_cosine), 3)
(Array([1., 0.], dtype=float32), 0.707, -0.687)
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradprom_jax.core.combiners import gradient_geometry as geometry
from gradprom_jax.core.combiners.state import CombinerState, GradPromMomentState


def init_moment_state(combiner_state: CombinerState, params: Any) -> GradPromMomentState:
  """Zero moments for ``params`` beside ``combiner_state`` (each leaf a buffer of its own)."""
  return GradPromMomentState(
      combiner_state, enhancement_moment=optax.tree.zeros_like(params, jnp.float32),
      task_moment=optax.tree.zeros_like(params, jnp.float32),
      moment_cosine=jax.tree.map(jnp.zeros_like, combiner_state.cosine))


def next_moment(moment: Any, gradient: Any, decay: float) -> Any:
  """β·moment + (1 − β)·gradient in float32; an entry whose gradient is not finite keeps its value.

  A single non-finite step would otherwise poison the average, and so close the gate, for good.

  >>> import jax.numpy as jnp
  >>> m = next_moment(jnp.zeros(2), jnp.array([1.0, 2.0]), 0.9)
  >>> next_moment(m, jnp.array([jnp.nan, 2.0]), 0.9)
  Array([0.1 , 0.38], dtype=float32)
  """
  gradient = jax.tree.map(lambda g: g.astype(jnp.float32), gradient)
  new = optax.tree.update_moment(gradient, moment, decay, order=1)
  return jax.tree.map(lambda n, m: jnp.where(jnp.isfinite(n), n, m), new, moment)


def next_moments_and_cosine(enhancement_moment: Any, task_moment: Any, g_e: Any, g_t: Any,
                            decay: float, granularity: geometry.Granularity
                            ) -> tuple[Any, Any, Any]:
  """(m_e, m_t, cos(m_e, m_t)) after a step with gradients (g_e, g_t), one cosine per block.

  >>> import jax.numpy as jnp
  >>> zero, g_e, g_t = jnp.zeros(2), jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0])
  >>> _, _, cosine = next_moments_and_cosine(zero, zero, g_e, g_t, 0.9, "global")
  >>> round(float(cosine), 3)   # after one step the moments are (1 − β) g: the step's own cosine
  0.707
  """
  enhancement_moment = next_moment(enhancement_moment, g_e, decay)
  task_moment = next_moment(task_moment, g_t, decay)
  cosine = geometry.cosine_similarity(enhancement_moment, task_moment, granularity)
  return enhancement_moment, task_moment, cosine
