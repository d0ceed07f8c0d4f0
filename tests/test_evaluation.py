"""Evaluation over a split: every metric is the same whatever the batch size, the padding of the last
batch and the devices, and each batch comes back to the host in one gather."""

import jax
import numpy as np
import pytest

from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.data import default_data_config, load_dataset, make_eval_loader
from gradprom_jax.training import evaluation
from gradprom_jax.training.parallel import DataParallel

from test_train_step import IMAGE, setup, tiny_config  # noqa: E402

NUM_VALIDATION = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  config = default_data_config()
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.image_size = IMAGE[:2]
  config.num_train, config.num_validation, config.num_test = 4, NUM_VALIDATION, 2
  return load_dataset(config)


def _split_metrics(system, state, dataset, global_batch_size, put_batch):
  eval_step = jax.jit(evaluation.make_eval_step(system))
  batches = make_eval_loader(dataset, "validation", global_batch_size=global_batch_size,
                             process_index=0, process_count=1)
  return evaluation.evaluate(system, eval_step, state, batches, put_batch, global_batch_size)


def _on_one_device(batch):
  return jax.device_put(batch, jax.devices()[0])


@pytest.mark.parametrize("recognition", ["segmentation", "classification"])
def test_split_metrics_are_unchanged_by_a_padded_last_batch(dataset, recognition):
  config = tiny_config(recognition=recognition)
  _, _, _, _, state = setup(config, num_classes=3)
  system = system_from_config(config, channels=IMAGE[-1], num_classes=3)
  parallel = DataParallel("mesh")
  # 6 examples in one unpadded batch on one device, against batches of 4 on 4 devices: 4 + 4 with
  # the last 2 padded.
  unpadded = _split_metrics(system, state.for_evaluation(), dataset, NUM_VALIDATION, _on_one_device)
  assert unpadded and all(np.isfinite(v) or "auc" in k for k, v in unpadded.items())
  state = jax.device_put(state, parallel.replicated).for_evaluation()
  padded = _split_metrics(system, state, dataset, 4, parallel.put_global_batch)
  assert padded.keys() == unpadded.keys()
  for key, value in unpadded.items():
    assert padded[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key


def test_each_batch_is_gathered_once(dataset, monkeypatch):
  config = tiny_config(recognition="classification")
  _, _, _, _, state = setup(config, num_classes=3)
  system = system_from_config(config, channels=IMAGE[-1], num_classes=3)
  gathers = []
  to_host = evaluation.to_host
  monkeypatch.setattr(evaluation, "to_host", lambda tree: gathers.append(1) or to_host(tree))
  _split_metrics(system, state.for_evaluation(), dataset, 4, _on_one_device)
  assert len(gathers) == 2   # two batches; outputs (with the labels) and padding flags together
