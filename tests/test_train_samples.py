"""The loop's sample grid (`gradprom_jax.training.train._save_samples`): each task's kind draws its
predictions and targets of the first test examples (a classification run names the predicted and
the true classes in the titles, a segmentation run adds the outline panel)."""
import jax
import numpy as np
import pytest
from matplotlib.figure import Figure

from gradprom_jax.data import default_data_config, load_dataset
from gradprom_jax.training import train
from gradprom_jax.training.parallel import DataParallel

from test_train_step import IMAGE, setup, tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  config = default_data_config()
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.image_size = IMAGE[:2]
  config.num_train, config.num_validation, config.num_test = 4, 2, 4
  return load_dataset(config)


@pytest.mark.parametrize("recognition, columns", [("classification", 3), ("segmentation", 4)])
def test_each_task_kind_draws_its_predictions(dataset, recognition, columns, tmp_path,
                                              monkeypatch):
  figures, savefig = [], Figure.savefig
  monkeypatch.setattr(Figure, "savefig", lambda f, *a, **k: figures.append(f) or savefig(f, *a, **k))
  num_classes = 2 if recognition == "segmentation" else len(dataset.class_names)
  system, _, _, _, state = setup(tiny_config(recognition=recognition), num_classes=num_classes)
  parallel = DataParallel("mesh")
  state = jax.device_put(state, parallel.replicated)
  train._save_samples(tmp_path / "samples.png", system, state, dataset,
                      2, parallel)
  axes = np.array(figures[0].axes).reshape(2, columns)
  titles = [ax.get_title() for ax in axes[:, 1]]
  if recognition == "classification":
    assert all(t.startswith("enhanced: pred ") for t in titles), titles
    assert all(ax.get_title().startswith("high quality: true ") for ax in axes[:, 2])
  else:
    assert titles == ["enhanced", "enhanced"]
    assert axes[0, 3].get_title() == "pred (red) / true (green)"
