"""MGDA (Sener & Koltun 2018): the minimum-norm point of the convex hull of g_e and λ g_t."""
from gradprom_jax.core.combiners.mgda import mgda
from gradprom_jax.methods.method import Method

METHOD = Method("mgda", "the minimum-norm point of the convex hull of g_e and λ g_t (Sener & "
                "Koltun 2018)", mgda, "separate")
