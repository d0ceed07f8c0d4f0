"""Evaluation of the whole pipeline (degrade → enhance → recognise) over a data split.

Every example is scored three ways: the recogniser on the enhanced image (the system), on the
bicubically interpolated degraded input (``no_enhancement``: what the recogniser gets without an
enhancer) and on the high-quality image (``hq_input``: the run's own recogniser on sharp input; not
an upper bound when that recogniser was trained on enhanced images). With a judge (a fixed
recogniser from another run, ``judge.workdir``) the same three images are scored by it too, in the
same step from the same enhancer forward pass: ``judge``, ``judge_no_enhancement`` and
``judge_high_quality``. Per-example values are computed on device, gathered from every device and
host in one transfer per batch (with the padding flags), and accumulated on the host
over the whole split (Dice/IoU from summed counts, AUC from all scores), so results do not depend on
the batch size or the number of devices. Each example is degraded with the id the loader gave it
(:mod:`gradprom_jax.training.example_ids`).

Every recogniser scores the same three images; each task's outputs sit under its name. In the
multi-task form each task metric's key is suffixed with its task's name (``dice/segmentation``,
``no_enhancement_accuracy/classification``, ``judge_dice/segmentation``); PSNR and SSIM, of the one
enhancer, keep their plain keys, as every key of a single-task form's run does.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from gradprom_jax.core import metrics as metrics_lib
from gradprom_jax.core.image_dtype import with_float_images
from gradprom_jax.core.system import RecognitionHead, TaskDrivenSystem, metric_key
from gradprom_jax.training.example_ids import example_ids as batch_example_ids

REFERENCES = ("enhanced", "no_enhancement", "hq_input")
# The judge's scores of the same three images, in the same order.
JUDGE_REFERENCES = ("judge", "judge_no_enhancement", "judge_high_quality")
# The eval degradation's seed is fixed and independent of the training seed, so every run of every
# method is scored on the same low-quality inputs.
EVAL_SEED = 20250101


def _recognition_outputs(head: RecognitionHead, recognizer_params: Any, images: jax.Array,
                         batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """The per-example values the head's kind accumulates (``TaskKind.eval_outputs``)."""
  probabilities = head.probabilities(head.recognize(recognizer_params, images, train=False))
  return head.kind.eval_outputs(probabilities, batch[head.target_key])


def _all_recognition_outputs(system: TaskDrivenSystem, recognizer_params: Any, images: jax.Array,
                             batch: dict[str, jax.Array]) -> dict[str, Any]:
  """Every task's outputs, by task name."""
  return {head.name: _recognition_outputs(head, recognizer_params[head.name], images, batch)
          for head in system.heads}


def make_eval_step(system: TaskDrivenSystem, judge: TaskDrivenSystem | None = None) -> Callable:
  """``(enhancer_params, recognizer_params, batch, first_id, judge_params=None) -> per-example
  outputs``.

  Each example is degraded with the key of its ``"example_id"`` (a batch without ids: example ``i``
  with that of ``first_id + i``). With a ``judge`` system (only its recognisers are used, one per
  task of this system), ``judge_params`` are its recognisers' params and the outputs also hold
  :data:`JUDGE_REFERENCES`.
  """
  def eval_step(enhancer_params, recognizer_params, batch, first_id, judge_params=None):
    batch = with_float_images(batch)
    high_quality = batch["image"]
    low_quality = system.degrade(jax.random.key(EVAL_SEED), high_quality,
                                 batch_example_ids(batch, first_id))
    enhanced = system.enhance(enhancer_params, low_quality, train=False)
    interpolated = system.interpolate(low_quality)
    outputs = {
        "enhanced": {"psnr": metrics_lib.psnr(enhanced, high_quality),
                     "ssim": metrics_lib.ssim(enhanced, high_quality)},
        "no_enhancement": {"psnr": metrics_lib.psnr(interpolated, high_quality),
                           "ssim": metrics_lib.ssim(interpolated, high_quality)},
        "hq_input": {},
    }
    images = (enhanced, interpolated, high_quality)
    for reference, image in zip(REFERENCES, images):
      outputs[reference].update(_all_recognition_outputs(system, recognizer_params, image, batch))
    if judge is not None:
      for reference, image in zip(JUDGE_REFERENCES, images):
        outputs[reference] = _all_recognition_outputs(judge, judge_params, image, batch)
    return outputs
  return eval_step


def make_predict_step(system: TaskDrivenSystem) -> Callable:
  """``(enhancer_params, recognizer_params, batch, first_id) -> images and predictions``, for
  sample grids (ids as in :func:`make_eval_step`); ``probabilities`` by task name."""
  def predict_step(enhancer_params, recognizer_params, batch, first_id):
    batch = with_float_images(batch)
    low_quality = system.degrade(jax.random.key(EVAL_SEED), batch["image"],
                                 batch_example_ids(batch, first_id))
    enhanced = system.enhance(enhancer_params, low_quality, train=False)
    probabilities = {head.name: head.probabilities(head.recognize(recognizer_params[head.name],
                                                                  enhanced, train=False))
                     for head in system.heads}
    return {"degraded": low_quality, "enhanced": enhanced, "probabilities": probabilities}
  return predict_step


class PipelineMetrics:
  """Accumulates :func:`make_eval_step` outputs over a split into flat metric names.

  ``compute()`` returns ``psnr``, ``ssim`` and the task metrics of the system, and the same metrics
  prefixed ``no_enhancement_`` and ``hq_input_`` (no PSNR/SSIM for the latter: it is the target);
  ``judged=True`` adds the judge's task metrics prefixed ``judge_``, ``judge_no_enhancement_`` and
  ``judge_high_quality_``. The outputs hold each head's values under its name; with ``multi_task``
  (the config's multi-task form) each task metric's key ends in ``/<task>``.
  """

  def __init__(self, heads: Sequence[RecognitionHead] | str, num_classes: int | None = None, *,
               judged: bool = False, multi_task: bool = False):
    if isinstance(heads, str):   # (recognition, num_classes): one task, the classic form
      heads = (RecognitionHead(name=heads, module=None, recognition=heads,
                               num_classes=num_classes),)
    self.heads, self.multi_task = tuple(heads), multi_task
    self.references = REFERENCES + (JUDGE_REFERENCES if judged else ())
    self.enhancement = {r: metrics_lib.EnhancementMetrics() for r in REFERENCES[:2]}
    self.task = {(r, head.name): head.kind.new_metrics(head.num_classes)
                 for r in self.references for head in self.heads}

  def update(self, outputs: dict[str, dict[str, np.ndarray]], valid: np.ndarray) -> None:
    """Adds one batch's :func:`make_eval_step` outputs (on the host), skipping padding."""
    for reference in self.references:
      values = dict(outputs[reference])
      if reference in self.enhancement:
        self.enhancement[reference].update(values.pop("psnr"), values.pop("ssim"),
                                           valid=valid)
      for head in self.heads:
        head.kind.update_metrics(self.task[reference, head.name], values[head.name], valid)

  def compute(self) -> dict[str, float]:
    results = {}
    for reference in self.references:
      prefix = "" if reference == "enhanced" else f"{reference}_"
      for head in self.heads:
        values = self.task[reference, head.name].compute()
        results.update({metric_key(f"{prefix}{k}", head.name, self.multi_task): float(v)
                        for k, v in values.items()})
      if reference in self.enhancement:
        results.update({f"{prefix}{k}": float(v)
                        for k, v in self.enhancement[reference].compute().items()})
    return results


def to_host(tree: Any) -> Any:
  """Global (sharded, possibly multi-host) arrays as full numpy arrays on every host."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def evaluate(system: TaskDrivenSystem, eval_step: Callable, state: Any,
             batches: Iterable[dict[str, np.ndarray]], put_batch: Callable,
             global_batch_size: int, judge_params: Any = None) -> dict[str, float]:
  """Scores ``state`` (mesh-replicated params) on every batch of a padded eval loader.

  ``put_batch`` places this host's slice as a global array; ``eval_step`` is the compiled
  :func:`make_eval_step` (made with the judge's system when ``judge_params`` are given).
  Padding examples (``valid == False``) are ignored. Each batch's outputs (with the targets a kind
  scores on the host) and padding flags come back to the host together, in one gather.
  """
  accumulator = PipelineMetrics(system.heads, judged=judge_params is not None,
                                multi_task=system.multi_task)
  for index, local_batch in enumerate(batches):
    batch = put_batch(local_batch)
    outputs = eval_step(state.enhancer_params, state.recognizer_params, batch,
                        index * global_batch_size, judge_params)
    outputs, valid = to_host((outputs, batch["valid"]))
    accumulator.update(outputs, valid)
  for head in system.heads:
    head.kind.check_predictions(accumulator.task["enhanced", head.name])
  return accumulator.compute()


def without_enhancer_scores(results: dict[str, float]) -> dict[str, float]:
  """``results`` less every score of an enhanced image (the system's and the judge's), for runs
  whose enhancer was never trained (``recognizer_only``).

  >>> without_enhancer_scores({"psnr": 9.0, "dice": 0.1, "hq_input_dice": 0.8, "judge_dice": 0.2,
  ...                          "judge_high_quality_dice": 0.8, "no_enhancement_psnr": 20.0})
  {'hq_input_dice': 0.8, 'judge_high_quality_dice': 0.8, 'no_enhancement_psnr': 20.0}
  """
  kept = tuple(f"{r}_" for r in REFERENCES[1:] + JUDGE_REFERENCES[1:])
  return {k: v for k, v in results.items() if k.startswith(kept)}
