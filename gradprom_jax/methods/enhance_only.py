"""Enhancement alone: g_e, the recogniser never influences the enhancer (the recogniser still trains)."""
from gradprom_jax.core.combiners.baselines import enhance_only
from gradprom_jax.methods.method import Method

METHOD = Method("enhance_only", "g_e alone: the recogniser never influences the enhancer",
                enhance_only, "enhancement", shared_options=())
