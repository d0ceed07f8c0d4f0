"""Tests of gradprom_jax.tasks.class_weights: balanced weights, and the shared Σ w that lets a
class-weighted loss split over devices or micro-batches average to the whole batch's."""

import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.tasks.class_weights import balanced_class_weights, class_weight_sum
from gradprom_jax.tasks.classification import classification_loss
from gradprom_jax.tasks.segmentation import segmentation_loss

RNG = np.random.default_rng(0)


def test_balanced_class_weights_have_mean_one_and_need_every_class():
  assert balanced_class_weights([72, 28]) == pytest.approx((0.56, 1.44))
  with pytest.raises(ValueError, match="none of class"):
    balanced_class_weights([5, 0])


def _classification_case():
  labels = jnp.array([0, 0, 0, 1, 2, 2, 1, 0])
  logits = jnp.asarray(RNG.normal(size=(8, 3)), jnp.float32)
  return (lambda parts, **kw: classification_loss(logits[parts], labels[parts], **kw),
          labels, jnp.array([0.2, 1.0, 3.0]))


def _segmentation_case():
  masks = jnp.asarray(RNG.uniform(size=(8, 16, 16)) > np.linspace(0.1, 0.9, 8)[:, None, None],
                      jnp.int32)
  logits = jnp.asarray(RNG.normal(size=(8, 16, 16, 2)), jnp.float32)
  return (lambda parts, **kw: segmentation_loss(logits[parts], masks[parts], **kw),
          masks, jnp.array([1.0, 4.0]))


@pytest.mark.parametrize("case", [_classification_case, _segmentation_case])
def test_parts_of_a_batch_average_to_its_loss_with_their_share_of_its_weight_sum(case):
  # A batch split in 4 (devices, micro-batches): each part divides by 1/4 of the whole Σ w, so the
  # parts' mean is the whole's Σ w·ℓ / Σ w; each part's own Σ w (the default) would not give it.
  loss, labels, weights = case()
  whole = loss(slice(None), class_weights=weights)
  share = class_weight_sum(labels, weights) / 4
  parts = [slice(i, i + 2) for i in range(0, 8, 2)]
  shared = np.mean([loss(p, class_weights=weights, normalizer=share) for p in parts])
  own = np.mean([loss(p, class_weights=weights) for p in parts])
  np.testing.assert_allclose(shared, whole, rtol=1e-6)
  assert abs(own - whole) > 1e-3
  # Without class weights every term is a mean over equal parts (soft Dice is per image).
  np.testing.assert_allclose(np.mean([loss(p) for p in parts]), loss(slice(None)), rtol=1e-6)
