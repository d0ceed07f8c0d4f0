"""Gradient combiners: how the enhancer's update is made from g_e and the task gradient g_t.

Pure optax transformations: nothing here knows about configs or methods (each method, with its
config group, is a module of :mod:`gradprom_jax.methods`, which also holds them by name).
"""
from gradprom_jax.core.combiners.accumulation import multi_steps
from gradprom_jax.core.combiners.baselines import enhance_only, joint, pcgrad, random_gate
from gradprom_jax.core.combiners.cagrad import cagrad
from gradprom_jax.core.combiners.gradient_geometry import cosine_similarity
from gradprom_jax.core.combiners.gradprom import GradPromState, gate_weight, gradprom
from gradprom_jax.core.combiners.gradvac import gradvac
from gradprom_jax.core.combiners.imtl_g import imtl_g
from gradprom_jax.core.combiners.mgda import mgda
from gradprom_jax.core.combiners.state import (CombinerState, GradPromEmaState, GradPromMomentState,
                                               GradVacState, combiner_metrics,
                                               find_combiner_metrics, find_combiner_state,
                                               init_combiner_state)
from gradprom_jax.core.combiners.tasks import MultiTaskState

__all__ = [
    "CombinerState", "GradPromEmaState", "GradPromMomentState", "GradPromState",
    "GradVacState", "cagrad", "combiner_metrics",
    "cosine_similarity", "enhance_only", "find_combiner_metrics", "find_combiner_state",
    "gate_weight", "gradprom", "gradvac", "imtl_g", "init_combiner_state", "joint",
    "mgda", "MultiTaskState", "multi_steps", "pcgrad", "random_gate",
]
