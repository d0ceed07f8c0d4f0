"""The combiners' gradient geometry runs at full float32 on every backend.

At default precision a dot product runs as bfloat16 passes on TPU and as TF32 on recent GPUs, so near
cos = 0 the gate's sign could differ between CPU, GPU and TPU. A CPU computes float32 dots exactly
whatever the flag says, so the flag itself is checked, in the traced update of every combiner.
"""
import jax
import jax.extend.core
import jax.numpy as jnp
import optax
import pytest

from gradprom_jax.core.combiners import gradprom
from gradprom_jax.methods import get_combiner

PARAMS = {"conv": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones((4,)), "scale": jnp.ones(())}

COMBINERS = {
    **{name: lambda name=name: get_combiner(name)
       for name in ("gradprom", "joint", "pcgrad", "random_gate", "enhance_only")},
    "gradprom per_leaf soft": lambda: gradprom(granularity="per_leaf", mode="soft"),
    "gradprom enhancement_norm": lambda: gradprom(task_scale="enhancement_norm", cosine_ema=0.9),
    "gradprom two tasks": lambda: gradprom(task_scale=("none", "enhancement_norm"),
                                           granularity=("global", "per_leaf")),
    "pcgrad two tasks": lambda: get_combiner("pcgrad", tasks=2),
}


def _equations(jaxpr):
  """Every equation of ``jaxpr``, including those inside nested jaxprs (jit, cond, scan, ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _equations(sub)


@pytest.mark.parametrize("name", COMBINERS)
def test_every_dot_product_of_a_combiners_update_is_full_float32(name):
  tx = optax.chain(COMBINERS[name](), optax.sgd(0.1))
  state = tx.init(PARAMS)
  two_tasks = "two tasks" in name
  task_grads = (PARAMS, PARAMS) if two_tasks else PARAMS
  jaxpr = jax.make_jaxpr(lambda g, s, t: tx.update(g, s, PARAMS, task_grads=t))(
      PARAMS, state, task_grads)
  dots = [eqn for eqn in _equations(jaxpr.jaxpr) if eqn.primitive.name == "dot_general"]
  assert dots, "no dot product traced: the check would be vacuous"   # every combiner logs a cosine
  for eqn in dots:
    assert eqn.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2, (
        f"{name}: a dot_general at precision {eqn.params['precision']}")
