"""The experiment (`gradprom_jax.training.experiment`): a run's config validated and parsed once
into the typed object the loop takes."""
import sys

import pytest

from configs import default
from gradprom_jax.configuration import task_parsing
from gradprom_jax.configuration.config_validation import ConfigError
from gradprom_jax.training.experiment import parse_experiment


def _count_calls(monkeypatch, module, name: str) -> list:
  """Counts calls of ``module.name`` wherever the package imported it by name."""
  original, calls = getattr(module, name), []

  def counted(*args, **kwargs):
    calls.append(args)
    return original(*args, **kwargs)

  for loaded in list(sys.modules.values()):
    if (getattr(loaded, "__name__", "").startswith("gradprom_jax")
        and getattr(loaded, name, None) is original):
      monkeypatch.setattr(loaded, name, counted)
  return calls


@pytest.mark.parametrize("option", ["smoke", "multitask,smoke"])
def test_the_tasks_are_parsed_once(monkeypatch, option):
  calls = _count_calls(monkeypatch, task_parsing, "parse_task_config")
  experiment = parse_experiment(default.get_config(option))
  assert len(calls) == 1
  assert experiment.tasks is experiment.spec.run.tasks


def test_the_loop_settings_are_read_from_the_config():
  config = default.get_config("smoke")
  config.method, config.seed, config.accumulate_steps = "joint", 3, 2
  config.recognizer.init_from, config.judge.workdir = "runs/r/seed_{seed}", "runs/j/seed_{seed}"
  config.checkpoint_best_metric, config.test_on_best = "-loss", True
  config.data.patch_size = (16, 16)
  experiment = parse_experiment(config)
  assert (experiment.method, experiment.seed, experiment.accumulate_steps) == ("joint", 3, 2)
  assert dict(experiment.init_from) == {"recognizer_params": "runs/r/seed_3"}
  assert experiment.judge_workdir == "runs/j/seed_3"
  checkpoints, batches = experiment.checkpoints, experiment.input
  assert (checkpoints.best_metric, checkpoints.test_on_best) == ("-loss", True)
  assert batches.patch_size == (16, 16) and batches.batch_size == config.batch_size
  assert (experiment.intervals.log_every, experiment.num_samples) == (config.log_every,
                                                                      config.num_samples)


def test_the_experiment_keeps_its_own_copy_of_the_config():
  config = default.get_config("smoke")
  experiment = parse_experiment(config)
  config.seed = 7
  assert experiment.config.seed == 0 and experiment.seed == 0


def test_a_bad_config_is_refused_and_the_devices_checked_apart():
  config = default.get_config("smoke")
  config.method = "gradpromm"
  with pytest.raises(ConfigError, match="method='gradpromm'"):
    parse_experiment(config)
  experiment = parse_experiment(default.get_config("smoke"))   # batch_size 4
  experiment.check_devices(4)
  with pytest.raises(ConfigError, match="not divisible by the number of devices"):
    experiment.check_devices(3)
