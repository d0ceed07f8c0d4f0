"""CAGrad (Liu et al. 2021): the update near the mean of g_e and λ g_t that best serves the worse."""
import ml_collections

from gradprom_jax.core.combiners.cagrad import cagrad
from gradprom_jax.methods.method import Method, OptionError


def options() -> ml_collections.ConfigDict:
  """``config.cagrad`` (see :func:`gradprom_jax.core.combiners.cagrad`)."""
  config = ml_collections.ConfigDict()
  # c: the radius of the ball around the mean gradient g₀, relative to ‖g₀‖, in which the update
  # maximises the smallest improvement (0: the mean; the authors use 0.4 or 0.5).
  config.c = 0.4
  # Divide the update by 1 + c², so its scale stays near g₀'s (the authors' rescale=1).
  config.rescale = False
  return config


def check(options: ml_collections.ConfigDict) -> None:
  if options.c < 0:
    raise OptionError(f"cagrad.c={options.c!r} must be a number >= 0 (0: the mean gradient).")


METHOD = Method("cagrad", "the update within c‖g₀‖ of the mean g₀ of g_e and λ g_t that maximises "
                "the smaller improvement (CAGrad, Liu et al. 2021)", cagrad, "separate",
                options=options, check=check)
