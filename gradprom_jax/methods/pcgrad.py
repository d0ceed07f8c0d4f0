"""PCGrad (Yu et al. 2020): g_e + λ g_t with a conflicting g_t projected off g_e."""
from gradprom_jax.core.combiners.baselines import pcgrad
from gradprom_jax.methods.method import Method

METHOD = Method("pcgrad", "g_e + λ g_t with a conflicting g_t projected off g_e (Yu et al. 2020)",
                pcgrad, "separate")
