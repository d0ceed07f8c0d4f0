"""Every training method by name: the combination methods (one module each in this package,
registered by :func:`register`) and the schedules (:mod:`gradprom_jax.methods.schedules`).

Everything that lists methods is derived from here: ``config.METHODS`` and the method groups of
``base_config()``, ``--help``, validation, the defaults a stored run's config lacks, and
:data:`COMBINERS` / :func:`get_combiner`.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Callable

import optax

from gradprom_jax.methods.method import Method
from gradprom_jax.methods.schedules import SCHEDULES, Schedule

_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds ``method`` to the registry (its module's ``METHOD`` is registered on import); returns it.

  >>> from gradprom_jax.core.combiners.baselines import joint
  >>> register(Method("joint", "always g_e + λ g_t", joint))
  Traceback (most recent call last):
  ...
  ValueError: A method named 'joint' is already registered.
  """
  if method.name in _METHODS or method.name in {s.name for s in SCHEDULES}:
    raise ValueError(f"A method named {method.name!r} is already registered.")
  _METHODS[method.name] = method
  return method


def combination_methods() -> tuple[Method, ...]:
  """The registered combination methods, in registration order."""
  return tuple(_METHODS.values())


def method_names() -> tuple[str, ...]:
  """The valid values of ``config.method``: the combination methods, then the schedules.

  >>> "gradprom" in method_names(), method_names()[-2:]
  (True, ('two_stage', 'recognizer_only'))
  """
  return (*_METHODS, *(schedule.name for schedule in SCHEDULES))


def lookup(name: str) -> Method | Schedule:
  """The method or schedule called ``name``.

  >>> lookup("pcgrad").enhancer_gradient, lookup("two_stage").name
  ('separate', 'two_stage')
  >>> lookup("gradnorm")  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  ValueError: Unknown method 'gradnorm'; expected one of ..., gradprom, ..., recognizer_only.
  """
  if name in _METHODS:
    return _METHODS[name]
  for schedule in SCHEDULES:
    if schedule.name == name:
      return schedule
  raise ValueError(f"Unknown method {name!r}; expected one of {', '.join(method_names())}.")


def option_defaults() -> dict[str, Any]:
  """Every method option's default by dotted key: what a stored run's config without it held.

  >>> option_defaults()["random_gate.open_rate"]
  0.5
  """
  return {f"{method.name}.{key}": value for method in _METHODS.values()
          for key, value in method.default_options().items()}


class _Combiners(Mapping):
  """The registered combination methods' combiner factories by name (a live view)."""

  def __getitem__(self, name: str) -> Callable[..., optax.GradientTransformationExtraArgs]:
    return _METHODS[name].combiner

  def __iter__(self) -> Iterator[str]:
    return iter(tuple(_METHODS))

  def __len__(self) -> int:
    return len(_METHODS)

  def __repr__(self) -> str:
    return f"COMBINERS({', '.join(_METHODS)})"


COMBINERS: Mapping[str, Callable[..., optax.GradientTransformationExtraArgs]] = _Combiners()


def get_combiner(name: str, **kwargs: Any) -> optax.GradientTransformationExtraArgs:
  """The combiner of method ``name``, built with ``kwargs``.

  >>> tx = get_combiner("gradprom", threshold=0.1, mode="soft")
  >>> type(tx).__name__
  'GradientTransformationExtraArgs'
  >>> get_combiner("gradnorm")  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  ValueError: Unknown combiner 'gradnorm'; valid names: ..., gradprom, ..., random_gate.
  """
  if name not in COMBINERS:
    raise ValueError(f"Unknown combiner {name!r}; valid names: {', '.join(sorted(COMBINERS))}.")
  return COMBINERS[name](**kwargs)
