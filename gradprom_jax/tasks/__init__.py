"""Recognition task kinds, one module each (``segmentation.py``, ``classification.py``): a kind
owns its loss, metrics, targets, output handling and sample drawing (:class:`TaskKind`); the
generic code finds it by name in :data:`TASK_KINDS`."""
from gradprom_jax.tasks.kind import LossOption, TaskKind, TaskMetrics
from gradprom_jax.tasks.registry import TASK_KINDS, task_kind

__all__ = ["LossOption", "TASK_KINDS", "TaskKind", "TaskMetrics", "task_kind"]
