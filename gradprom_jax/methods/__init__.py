"""Training methods, one module each, found by name.

A combination method is a module of this package that defines ``METHOD``, a
:class:`~gradprom_jax.methods.method.Method`: its combiner, its config group (defaults with the
comments ``--help`` shows), its checks. Importing the package registers every such module, in the
order of their names; nothing else lists them (:mod:`gradprom_jax.methods.registry`). The two
schedules (``two_stage``, ``recognizer_only``) are in :mod:`gradprom_jax.methods.schedules`.

>>> from gradprom_jax import methods
>>> methods.lookup("gradprom").enhancer_gradient, methods.lookup("gradprom").combiner_args["mode"]
('separate', 'gradprom.mode')
"""
import importlib
import pkgutil

from gradprom_jax.methods.choice import MethodChoice, build_combiner, enhancer_gradient
from gradprom_jax.methods.method import Method, OptionError
from gradprom_jax.methods.registry import (COMBINERS, combination_methods, get_combiner, lookup,
                                           method_names, option_defaults, register)
from gradprom_jax.methods.schedules import SCHEDULES, Schedule


def _register_method_modules() -> None:
  for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    module = importlib.import_module(f"{__name__}.{module_info.name}")
    if isinstance(getattr(module, "METHOD", None), Method):
      register(module.METHOD)


_register_method_modules()

__all__ = [
    "COMBINERS", "Method", "MethodChoice", "OptionError", "SCHEDULES", "Schedule",
    "build_combiner", "combination_methods", "enhancer_gradient", "get_combiner", "lookup",
    "method_names", "option_defaults", "register",
]
