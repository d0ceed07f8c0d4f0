"""Every config file loads, with each of its options, and passes validation (no data, no compile)."""
import importlib.util
from pathlib import Path

import pytest

from gradprom_jax.configuration.config_validation import validate_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OPTIONS = {
    "default.py": [None, "smoke", "classification", "classification,smoke", "multitask",
                   "multitask,smoke"],
    "ph2.py": [None, "smoke", "classification", "official", "classification,smoke", "multitask",
               "multitask,smoke", "multitask,official"],
    "isic.py": [None, "smoke", "task3", "2017", "task3,smoke", "multitask", "multitask,2017,smoke"],
    "kvasir.py": [None, "smoke"],
    "chest_xray.py": [None, "smoke"],
    "pneumoniamnist.py": [None, "smoke"],
    "image_folder.py": [None, "smoke", "classification"],
}


def load(name):
  spec = importlib.util.spec_from_file_location(name[:-3], CONFIGS / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config


def test_every_config_file_is_covered():
  assert sorted(p.name for p in CONFIGS.glob("*.py") if not p.name.startswith("_")) == sorted(OPTIONS)


@pytest.mark.parametrize("name, option", [(n, o) for n, opts in OPTIONS.items() for o in opts])
def test_config_loads_and_validates(name, option):
  config = load(name)(option)
  validate_config(config, num_devices=4 if config.batch_size % 4 == 0 else 1)
  # The docstring holds the command that runs it.
  assert f"experiments/main.py --config configs/{name}" in (CONFIGS / name).read_text()
  if option and "smoke" in option:
    assert config.num_train_steps <= 10 and config.model.enhancer.features <= 8
    recognizers = config.model.recognizers.values() if "recognizers" in config.model else ()
    assert all(model.features <= 8 for model in recognizers)


def test_unknown_option_is_rejected():
  with pytest.raises(ValueError, match="Unknown config option"):
    load("ph2.py")("tiny")
