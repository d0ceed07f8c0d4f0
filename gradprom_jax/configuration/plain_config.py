"""A config as plain JSON values: nested (:func:`to_plain`, what ``config.json`` holds) or flat
(:func:`flatten_config`, one dotted key per value, what the help and the config comparisons read)."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def to_plain(config: Any) -> Any:
  """ConfigDict / dataclass / mapping -> nested dicts of JSON values (tuples become lists).

  >>> import ml_collections
  >>> to_plain(ml_collections.ConfigDict({"model": {"depths": (2, 2)}, "schedule": None}))
  {'model': {'depths': [2, 2]}, 'schedule': None}
  """
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict / FrozenConfigDict.
    config = config.to_dict()
  elif dataclasses.is_dataclass(config) and not isinstance(config, type):
    config = dataclasses.asdict(config)
  if isinstance(config, Mapping):
    return {str(k): to_plain(v) for k, v in config.items()}
  if isinstance(config, (list, tuple)):
    return [to_plain(v) for v in config]
  if config is None or isinstance(config, (bool, int, float, str)):
    return config
  return str(config)  # Callables, enums, paths: their text is what identifies them.


def flatten_config(config: Any) -> dict[str, Any]:
  """Nested config -> {"dotted.key": JSON value}.

  >>> flatten_config({"model": {"width": 32, "depths": (2, 2)}, "lr": 1e-3})
  {'model.width': 32, 'model.depths': [2, 2], 'lr': 0.001}
  """
  flat = {}

  def visit(prefix: str, node: Any) -> None:
    if isinstance(node, dict) and node:
      for key, value in node.items():
        visit(f"{prefix}.{key}" if prefix else key, value)
    else:
      flat[prefix] = node

  visit("", to_plain(config))
  return flat
