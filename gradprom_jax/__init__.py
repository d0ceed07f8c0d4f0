"""gradprom_jax: task-driven medical image quality enhancement with gradient promotion (GradProm).

The public optimiser API (``optax.chain(gradprom(), ...)``) is re-exported here from ``core`` (the
combiners by name from ``methods``); the rest lives in subpackages named by role: ``core`` (the
paper's maths), ``models``, ``data``, ``methods``, ``configuration``, ``training`` and ``inference``
(README, "Layout"). Sweeps, statistics and the study's tooling live outside the package, in the
repository's ``experiments/tools``.
"""
from gradprom_jax.core.combiners import (CombinerState, GradPromState, GradVacState, cagrad,
                                         combiner_metrics, cosine_similarity, enhance_only,
                                         find_combiner_state, gradprom, gradvac, imtl_g, joint, mgda,
                                         multi_steps, pcgrad)
from gradprom_jax.methods import COMBINERS, get_combiner

__version__ = "0.1.0"

__all__ = [
    "COMBINERS", "CombinerState", "GradPromState", "GradVacState", "cagrad", "combiner_metrics",
    "cosine_similarity", "enhance_only", "find_combiner_state", "get_combiner", "gradprom", "gradvac",
    "imtl_g", "joint", "mgda", "multi_steps", "pcgrad",
]
