"""What a recognition task kind is: :class:`TaskKind`, the interface the generic code asks.

A kind (segmentation, classification, ...) owns everything that differs between recognition tasks:
the batch entry it is scored against, its loss and the loss's own option, how a recogniser's
logits become probabilities and predictions, the per-example values its evaluation computes on
device and the accumulator that turns them into whole-split metrics on the host, what it reads
from a dataset (its classes, whether the targets are there), how its predictions are drawn on
the sample grid and written by ``experiments/enhance.py``, and its loss's options
(:class:`LossOption`: ``base_config()``'s ``task.<option>``, a multi-task config's
``task.<task>.<option>`` and their ``--help`` lines are made from them). The config, the system, the train
step, the evaluation, the sample grid and enhance.py call these methods and never compare a
kind's name. A new kind is one module defining a subclass and its instance ``KIND``, and one line
in :mod:`gradprom_jax.tasks.registry`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class LossOption:
  """One option of a kind's loss besides ``class_weights``: a keyword of :meth:`TaskKind.loss`.

  Its config keys are ``task.<name>`` (shared by the tasks) and ``task.<task>.<name>`` (one task of
  a multi-task config; None there takes the shared key's); ``doc`` is their ``--help`` comment.

  >>> LossOption("dice_weight", 1.0, "Cross-entropy + dice_weight · soft Dice.").default
  1.0
  """
  name: str
  default: Any
  doc: str


class TaskMetrics(Protocol):
  """A host accumulator of one task's evaluation outputs over a whole split."""

  def compute(self) -> dict[str, float]:
    ...


class TaskKind(abc.ABC):
  """One kind of recognition task; subclasses set the class attributes and the abstract methods.

  Attributes:
    name: the kind's name, as ``task.recognition`` gives it (also the task's name in a config).
    target_key: the batch entry the task is scored against (``"mask"``, ``"label"``).
    targets_description: what those targets are, for error messages (``"lesion masks"``).
    loss_options: the options of the kind's loss besides ``class_weights`` (:class:`LossOption`).
    logits_per: what one logit vector of its recogniser scores: ``"image"`` (a class per image) or
      ``"pixel"`` (a class per pixel); config validation matches it to the recogniser model's
      ``logits_per`` (``models.RECOGNIZERS``), so a new kind trains with any model of that form.
    balanced_class_weights: whether ``class_weights="balanced"`` applies (weights from the training
      split's image-label counts).
    primary_metric: the metric a comparison plots against PSNR (``compare.py``'s default).
    front_metrics: the metrics a study reads its quality–task fronts on (``study.py``'s default),
      a threshold metric beside a ranking one where the kind has both.
  """
  name: ClassVar[str]
  target_key: ClassVar[str]
  targets_description: ClassVar[str]
  loss_options: ClassVar[tuple[LossOption, ...]] = ()
  logits_per: ClassVar[str] = "image"
  balanced_class_weights: ClassVar[bool] = False
  primary_metric: ClassVar[str]
  front_metrics: ClassVar[tuple[str, ...]]

  # ---- Training (on device).
  @abc.abstractmethod
  def loss(self, logits: jax.Array, targets: jax.Array, *, class_weights: jax.Array | None = None,
           normalizer: jax.Array | None = None, **options: Any) -> jax.Array:
    """The task loss of ``logits`` against ``targets``, a float32 scalar; ``options``: the values of
    :attr:`loss_options` by name; ``normalizer``: the Σ w of a class-weighted loss
    (:mod:`gradprom_jax.tasks.class_weights`)."""

  def probabilities(self, logits: jax.Array) -> jax.Array:
    """Class probabilities over the last axis; a 1-channel output is a sigmoid."""
    if logits.shape[-1] == 1:
      positive = jax.nn.sigmoid(logits)
      return jnp.concatenate([1 - positive, positive], axis=-1)
    return jax.nn.softmax(logits, axis=-1)

  def predictions(self, probabilities: Any) -> Any:
    """The predicted classes of ``probabilities`` (jax or numpy)."""
    return probabilities.argmax(-1)

  # ---- Evaluation: per-example values on device, a whole-split accumulator on the host.
  @abc.abstractmethod
  def eval_outputs(self, probabilities: jax.Array, targets: jax.Array) -> dict[str, jax.Array]:
    """Per-example values (leading axis: the batch) that :meth:`update_metrics` accumulates."""

  @abc.abstractmethod
  def new_metrics(self, num_classes: int) -> TaskMetrics:
    """An empty accumulator of this kind's metrics."""

  @abc.abstractmethod
  def update_metrics(self, metrics: TaskMetrics, outputs: dict[str, np.ndarray],
                     valid: np.ndarray | None) -> None:
    """Adds :meth:`eval_outputs` (on the host) of the examples ``valid`` marks."""

  def check_predictions(self, metrics: TaskMetrics) -> None:
    """Warns about a degenerate recogniser, given the enhanced images' metrics (default: nothing)."""

  # ---- The dataset.
  @abc.abstractmethod
  def class_names(self, dataset: Any) -> tuple[str, ...]:
    """The recogniser's output classes on ``dataset``."""

  def has_targets(self, dataset: Any) -> bool:
    """Whether ``dataset`` holds this kind's targets."""
    return bool(getattr(dataset, f"has_{self.target_key}"))

  # ---- The sample grid (training/visualization.py): one row of panels per example.
  def example_shape(self, height: int, width: int) -> tuple[int, ...]:
    """The shape of one example's prediction or target for ``height`` × ``width`` images (one
    class per image by default)."""
    return ()

  def draws_extra_panel(self) -> bool:
    """Whether the kind adds a fourth panel to each row (the enhanced image with its overlay)."""
    return False

  def draw(self, axes: Any, prediction: np.ndarray, target: np.ndarray | None,
           class_names: tuple[str, ...] | None) -> None:
    """Draws one example's ``prediction`` (and ``target``) on its row of matplotlib ``axes``:
    degraded, enhanced, high quality (and the extra panel when :meth:`draws_extra_panel`)."""

  # ---- What experiments/enhance.py writes for each image.
  def prediction_columns(self, probabilities: np.ndarray,
                         class_names: tuple[str, ...] | None) -> dict[str, str]:
    """One image's columns of ``predictions.csv`` from its class ``probabilities`` (default: the
    predicted class and each class's probability)."""
    names = class_names or tuple(str(k) for k in range(probabilities.shape[-1]))
    return {"predicted": names[int(probabilities.argmax())],
            **{f"p_{name}": f"{p:.6f}" for name, p in zip(names, probabilities)}}

  def prediction_image(self, probabilities: np.ndarray) -> tuple[str, np.ndarray] | None:
    """One image's predictions as a picture: (folder under the output, (H, W, 1) pixels in [0, 1]),
    or None when the kind writes none (default)."""
    return None

  def __repr__(self) -> str:
    return f"<task kind {self.name!r}>"
