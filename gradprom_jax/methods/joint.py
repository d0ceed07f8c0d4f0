"""Joint training: always g_e + λ g_t, the gradient of L_enh + λ L_task."""
from gradprom_jax.core.combiners.baselines import joint
from gradprom_jax.methods.method import Method

# One pull-back of the summed losses (the cheapest); the combiner only logs the cosine under
# measure_baseline_cosine.
METHOD = Method("joint", "always g_e + λ g_t: the gradient of L_enh + λ L_task", joint, "summed")
