"""What a new user hit on their own data: blank labels, missing downloads, class names, imbalance.

The CLI tests drive `experiments/main.py` the way the user did (`:smoke`, tmp workdir and data dir).
"""
import logging

import numpy as np

from gradprom_jax import evaluation, metrics


def test_single_class_predictions_are_warned_about(caplog):
  collapsed = metrics.ClassificationMetrics(num_classes=2).update(
      np.tile([[0.7, 0.3]], (5, 1)), np.array([0, 0, 0, 1, 1]))
  varied = metrics.ClassificationMetrics(num_classes=2).update(
      np.array([[0.7, 0.3], [0.2, 0.8]]), np.array([0, 1]))
  with caplog.at_level(logging.WARNING):
    assert evaluation.warn_if_single_class_predicted(collapsed)
    assert not evaluation.warn_if_single_class_predicted(varied)
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and "predicts class 0 for all 5 examples" in warnings[0]
  assert "class_weights=balanced" in warnings[0]
