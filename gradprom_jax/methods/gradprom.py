"""GradProm, the paper's method: g_e + λ g_t where cos(g_e, g_t) > τ, else g_e."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from gradprom_jax.core.combiners.gradient_geometry import GRANULARITIES
from gradprom_jax.core.combiners.gradprom import GATE_MODES, TASK_SCALES, gradprom
from gradprom_jax.methods.method import Method, OptionError, check_choice, check_fraction


def options() -> ml_collections.ConfigDict:
  """``config.gradprom``: the gate's options (see :func:`gradprom_jax.core.combiners.gradprom`)."""
  config = ml_collections.ConfigDict()
  config.granularity = "global"   # global | per_leaf
  config.mode = "hard"            # hard | soft
  config.threshold = 0.0
  # none | enhancement_norm (g_t rescaled to ‖g_e‖ before λ; ours, for ‖g_t‖ >> ‖g_e‖).
  config.task_scale = "none"
  # β of a moving average of the cosine that must also exceed the threshold (ours, for small
  # batches whose per-step cosine is mostly noise); 0.0: off, the paper's per-step rule.
  config.cosine_ema = 0.0
  # β of moving averages of g_e and g_t whose cosine must also exceed the threshold (ours, the same
  # aim: the gate reads the averaged signal; two float32 copies of the enhancer's gradients in the
  # optimiser state); 0.0: off. Exclusive with cosine_ema.
  config.gradient_ema = 0.0
  return config


def check_gate(gate: Mapping[str, Any], prefix: str) -> None:
  """The gate options a task may set on its own (granularity, mode, task_scale, threshold), at the
  config keys ``<prefix><option>``.

  >>> check_gate({"granularity": "global", "mode": "hard", "task_scale": "none",
  ...             "threshold": -0.1}, "task.classification.gradprom.")
  Traceback (most recent call last):
  ...
  gradprom_jax.methods.method.OptionError: task.classification.gradprom.threshold=-0.1 < 0 with mode 'hard' opens the gate on conflicting gradients, breaking the descent guarantee: set task.classification.gradprom.threshold >= 0.
  """
  check_choice(f"{prefix}granularity", gate["granularity"], GRANULARITIES)
  check_choice(f"{prefix}mode", gate["mode"], GATE_MODES)
  check_choice(f"{prefix}task_scale", gate["task_scale"], TASK_SCALES)
  if gate["mode"] == "hard" and gate["threshold"] < 0:
    raise OptionError(
        f"{prefix}threshold={gate['threshold']} < 0 with mode 'hard' opens the gate on "
        f"conflicting gradients, breaking the descent guarantee: set {prefix}threshold >= 0.")


def check(options: ml_collections.ConfigDict) -> None:
  check_gate(options, "gradprom.")
  for key in ("cosine_ema", "gradient_ema"):
    check_fraction(f"gradprom.{key}", options[key], closed=False,
                   note=" (0 turns the moving average off)")
  if options.cosine_ema and options.gradient_ema:
    raise OptionError("gradprom.cosine_ema and gradprom.gradient_ema are both set: choose one "
                      "moving average to gate on (set the other to 0).")


METHOD = Method("gradprom", "g_e + λ g_t where cos(g_e, g_t) > τ, else g_e (the paper's method)",
                gradprom, "separate", options=options, check=check)
