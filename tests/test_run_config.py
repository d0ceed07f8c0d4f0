"""Tests for gradprom_jax.training.run_config: first write, identical restart, refusal with a diff, overwrite."""

import json

import ml_collections
import pytest

from gradprom_jax.training.checkpointing import WorkdirError
from gradprom_jax.training.run_config import (ConfigMismatchError, check_or_save_config,
                                              config_differences)


def _config(**overrides):
  config = ml_collections.ConfigDict({
      "seed": 0,
      "overwrite": False,
      "log_every": 10,
      "model": {"name": "unet", "widths": (16, 32)},
      "combiner": {"name": "gradprom", "threshold": 0.0},
  })
  config.update_from_flattened_dict(overrides)
  return config


def test_first_start_writes_json(tmp_path):
  path = check_or_save_config(tmp_path / "run", _config())
  stored = json.loads(path.read_text())
  assert stored["model"] == {"name": "unet", "widths": [16, 32]}


def test_same_config_and_resumable_keys_pass(tmp_path):
  check_or_save_config(tmp_path, _config())
  check_or_save_config(tmp_path, _config())
  check_or_save_config(tmp_path, _config(**{"log_every": 100, "overwrite": True}))


def test_different_config_refused_with_each_key_old_to_new(tmp_path):
  check_or_save_config(tmp_path, _config())
  changed = _config(**{"combiner.name": "joint", "model.widths": (16, 64), "seed": 0})
  with pytest.raises(ConfigMismatchError) as error:
    check_or_save_config(tmp_path, changed)
  message = str(error.value)
  assert "combiner.name: 'gradprom' -> 'joint'" in message
  assert "model.widths: [16, 32] -> [16, 64]" in message
  assert "seed" not in message
  assert "--config.overwrite=True" in message
  assert json.loads((tmp_path / "config.json").read_text())["combiner"]["name"] == "gradprom"


def test_overwrite_resumes_and_keeps_old_config(tmp_path):
  check_or_save_config(tmp_path, _config())
  check_or_save_config(tmp_path, _config(**{"seed": 1}), overwrite=True)
  assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1
  (backup,) = tmp_path.glob("config.2*.json")
  assert json.loads(backup.read_text())["seed"] == 0


def test_added_and_removed_keys_are_reported():
  assert config_differences({"a": 1}, {"b": 2}) == ["a: 1 -> <missing>", "b: <missing> -> 2"]


def test_unwritable_workdir_names_path(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(WorkdirError, match=str(blocker / "run")):
    check_or_save_config(blocker / "run", _config())


def test_a_config_stored_by_other_code_is_refused_in_one_line(tmp_path):
  """Keys added or removed since the run, no value changed: one line that says what to do."""
  stored = _config().to_dict()
  stored["old_group"] = {"dropped_key": 0.5}             # removed from the config since
  (tmp_path / "config.json").write_text(json.dumps(stored))
  new = _config()
  new.test_on_best = False                              # added since
  with pytest.raises(ConfigMismatchError) as refused:
    check_or_save_config(tmp_path, new)
  message = str(refused.value)
  assert "\n" not in message and "another version of gradprom_jax" in message
  assert "old_group.dropped_key" in message and "test_on_best" in message
  assert "--workdir" in message


def test_a_changed_value_beside_a_new_key_lists_every_difference(tmp_path):
  check_or_save_config(tmp_path, _config())
  new = _config(seed=1)
  new.test_on_best = False
  with pytest.raises(ConfigMismatchError, match=r"(?s)seed: 0 -> 1.*test_on_best: <missing>"):
    check_or_save_config(tmp_path, new)


def test_committed_run_configs_hold_every_key_the_code_reads():
  """The committed runs' config.json were migrated once: none lacks a key older code had no
  notion of (the registries' options aside, which default to the behaviour without them)."""
  from pathlib import Path
  from gradprom_jax.training.run_config import keys_missing_from
  results = Path(__file__).resolve().parents[1] / "results"
  lacking = {str(path.relative_to(results)): missing for path in results.rglob("config.json")
             if (missing := keys_missing_from(json.loads(path.read_text())))}
  assert len(list(results.rglob("config.json"))) > 600
  assert not lacking, f"{len(lacking)} committed config.json lack keys, e.g. {next(iter(lacking.items()))}"
