"""The recognition task kinds by name: one module each, registered here in one line.

>>> tuple(TASK_KINDS)
('segmentation', 'classification')
>>> task_kind("classification").target_key
'label'
>>> task_kind("detection")
Traceback (most recent call last):
...
KeyError: "unknown task kind 'detection'; valid: segmentation, classification"
"""
from __future__ import annotations

from gradprom_jax.tasks import classification, segmentation
from gradprom_jax.tasks.kind import TaskKind

TASK_KINDS: dict[str, TaskKind] = {kind.name: kind for kind in (
    segmentation.KIND,
    classification.KIND,
)}


def task_kind(name: str) -> TaskKind:
  """The registered kind called ``name``."""
  try:
    return TASK_KINDS[name]
  except KeyError:
    raise KeyError(f"unknown task kind {name!r}; valid: {', '.join(TASK_KINDS)}") from None
