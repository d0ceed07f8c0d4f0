"""IMTL-G (Liu et al. 2021): the combination of g_e and λ g_t with equal projections on each."""
from gradprom_jax.core.combiners.imtl_g import imtl_g
from gradprom_jax.methods.method import Method

METHOD = Method("imtl_g", "the combination of g_e and λ g_t (weights summing to 1) with equal "
                "projections on each unit gradient (IMTL-G, Liu et al. 2021)", imtl_g, "separate")
