"""The run's config in its workdir: written at the first start, checked on every restart.

Resuming a workdir with a different config would silently splice two experiments into one
curve. `check_or_save_config` writes ``config.json`` at the first start; on a restart it compares
the new config with the stored one and refuses with the differing keys (``old -> new``) unless
``overwrite=True``, in which case the old file is kept as ``config.<UTC time>.json`` for the record.

Keys that may legitimately change on resume are ignored (`RESUMABLE_KEYS`, fnmatch patterns over
dotted keys): the overwrite switch itself, how often to log/evaluate/checkpoint, the run length
(extending a finished run), where the built dataset is stored, and the multi-host launch settings.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gradprom_jax import methods
from gradprom_jax.configuration.plain_config import flatten_config, to_plain
from gradprom_jax.data.registry import dataset_key_defaults
from gradprom_jax.training.checkpointing import WorkdirError

CONFIG_FILENAME = "config.json"

RESUMABLE_KEYS = (
    "overwrite",
    "*_every",               # log_every, eval_every, checkpoint_every, preemption_check_every
    "keep_checkpoints",
    "num_samples",
    "max_nonfinite_steps",
    # Extending a run. The cosine schedule depends on it, so an extended run matches no
    # uninterrupted run of the new length; train.py warns when it changes.
    "num_train_steps",
    "data.data_dir",         # where the built TFDS files live, not what they hold
    "accumulate_steps",      # the same update in fewer, larger micro-batches: memory, not results
    "data.prefetch",         # how the same batches reach the devices
    "data.num_workers",
    "data.read_buffer",
    "model.remat",           # recomputes the same activations: memory, not results
    "distributed.*",
)


# Keys added after runs were already being made, each with the value that reproduces how code
# without the key behaved: a stored config that lacks such a key matches a new config holding this
# value (so upgrading the code does not lock finished or interrupted runs out of resuming). The
# methods' options and each dataset's own keys are not listed: each counts as its default
# (`added_key_defaults`), so a new method, dataset or key of one needs no entry here.
ADDED_KEY_DEFAULTS = {
    "model.dtype": "float32",
    "recognizer.init_from": None,
    "enhancer.init_from": None,
    "judge.workdir": None,
    "optim.ema_decay": None,
    "optim.weight_decay_mask": "all",
    "checkpoint_best_metric": None,
    "test_on_best": False,
}


# Keys removed from the config, each with a test of the stored (flat) config that is true when the
# key changed nothing in that run: such a run matches today's config; any other differs and is
# refused (its schedule would change under the new code).
REMOVED_KEYS = {
    # two_stage is now step-matched; the fraction mattered to two_stage runs only.
    "two_stage.enhancer_fraction": lambda stored: stored.get("method") != "two_stage",
}


def added_key_defaults() -> dict[str, Any]:
  """`ADDED_KEY_DEFAULTS`, every registered method's options and every dataset's own keys with their
  defaults (an option defaults to how the code behaved without it; see
  :class:`gradprom_jax.methods.Method`, `gradprom_jax.data.registry.dataset_key_defaults`).

  >>> added_key_defaults()["gradprom.cosine_ema"], added_key_defaults()["model.dtype"]
  (0.0, 'float32')
  """
  return {**dataset_key_defaults(), **methods.option_defaults(), **ADDED_KEY_DEFAULTS}


class ConfigMismatchError(ValueError):
  """The workdir holds a run with a different config."""


def config_differences(old: Any, new: Any, *, ignore: Iterable[str] = RESUMABLE_KEYS) -> list[str]:
  """Lines ``key: old -> new`` for every differing dotted key not matching an `ignore` pattern.

  A key of :func:`added_key_defaults` missing from ``old`` counts as holding its value there; a
  key of `REMOVED_KEYS` in ``old`` only is ignored where it changed nothing in that run.

  >>> config_differences({"lr": 0.1, "log_every": 10, "seed": 0},
  ...                    {"lr": 0.2, "log_every": 50})
  ['lr: 0.1 -> 0.2', 'seed: 0 -> <missing>']
  >>> config_differences({"lr": 0.1}, {"lr": 0.1, "gradprom": {"task_scale": "none"}})
  []
  >>> config_differences({"method": "joint", "two_stage": {"enhancer_fraction": 0.5}},
  ...                    {"method": "joint"})
  []
  """
  old_flat, new_flat = flatten_config(old), flatten_config(new)
  ignore, defaults = tuple(ignore), added_key_defaults()
  missing = object()

  def show(value: Any) -> str:
    return "<missing>" if value is missing else repr(value)

  lines = []
  for key in sorted(old_flat.keys() | new_flat.keys()):
    if any(fnmatch.fnmatchcase(key, pattern) for pattern in ignore):
      continue
    before = old_flat.get(key, defaults.get(key, missing))
    after = new_flat.get(key, missing)
    if after is missing and key in REMOVED_KEYS and REMOVED_KEYS[key](old_flat):
      continue
    if before != after:
      lines.append(f"{key}: {show(before)} -> {show(after)}")
  return lines


def check_stored_config(workdir: str | os.PathLike[str], config: Any, *, overwrite: bool = False,
                        ignore: Iterable[str] = RESUMABLE_KEYS) -> list[str]:
  """The differences between ``config`` and the one stored in ``workdir``; writes nothing.

  Cheap, so a command can be refused before any expensive work (building a dataset): a missing
  workdir or ``config.json`` has no differences.

  Raises:
    ConfigMismatchError: the stored config differs and `overwrite` is False.

  >>> import tempfile
  >>> workdir = tempfile.mkdtemp()
  >>> check_stored_config(workdir + "/not_yet", {"lr": 0.1})
  []
  >>> _ = check_or_save_config(workdir, {"lr": 0.1})
  >>> check_stored_config(workdir, {"lr": 0.2}, overwrite=True)
  ['lr: 0.1 -> 0.2']
  """
  path = Path(workdir) / CONFIG_FILENAME
  if not path.is_file():
    return []
  differences = config_differences(json.loads(path.read_text()), config, ignore=ignore)
  if differences and not overwrite:
    listing = "\n  ".join(differences)
    raise ConfigMismatchError(
        f"Workdir {str(workdir)!r} holds a run with a different config "
        f"(stored {CONFIG_FILENAME} -> this command):\n  {listing}\n"
        "Use another --workdir, or pass --config.overwrite=True to resume it with the new "
        "config anyway.")
  return differences


def check_or_save_config(workdir: str | os.PathLike[str], config: Any, *, overwrite: bool = False,
                         ignore: Iterable[str] = RESUMABLE_KEYS, write: bool = True) -> Path:
  """Saves `config` as ``workdir/config.json``, or checks it against the one already there.

  Args:
    workdir: the run's directory (created if needed).
    config: a ConfigDict, dataclass or mapping.
    overwrite: resume even if the stored config differs (the old file is kept, renamed).
    ignore: fnmatch patterns of dotted keys allowed to differ.
    write: whether this process writes the file (pass ``jax.process_index() == 0``); all
      processes check.

  Returns:
    The path of ``config.json``.

  Raises:
    ConfigMismatchError: the stored config differs and `overwrite` is False.
    WorkdirError: the workdir cannot be written.

  >>> import tempfile
  >>> workdir = tempfile.mkdtemp()
  >>> check_or_save_config(workdir, {"lr": 0.1}).name
  'config.json'
  >>> try:
  ...   check_or_save_config(workdir, {"lr": 0.2})
  ... except ConfigMismatchError as e:
  ...   print(str(e).splitlines()[1])
    lr: 0.1 -> 0.2
  """
  path = Path(workdir) / CONFIG_FILENAME
  if path.exists():
    stored = json.loads(path.read_text())
    new_length = to_plain(config).get("num_train_steps")
    if stored.get("num_train_steps") not in (None, new_length):
      logging.warning("num_train_steps changed %s -> %s on resume: the learning-rate schedules now "
                      "follow the new length, so this run matches no uninterrupted run.",
                      stored["num_train_steps"], new_length)
    differences = check_stored_config(workdir, config, overwrite=overwrite, ignore=ignore)
    if not differences:
      return path
    listing = "\n  ".join(differences)
    logging.warning("Resuming %s with a changed config (overwrite=True):\n  %s", workdir, listing)
    if write:
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
      _guard_io(path, lambda: path.rename(path.with_name(f"config.{stamp}.json")))
  if write:
    _guard_io(path, lambda: _write_atomically(path, json.dumps(to_plain(config), indent=2)))
  return path


def _write_atomically(path: Path, text: str) -> None:
  """Writes via a temporary file and a rename, so a crash never leaves half a config.json."""
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
  temporary.write_text(text + "\n")
  os.replace(temporary, path)


def _guard_io(path: Path, action) -> None:
  try:
    action()
  except OSError as e:
    raise WorkdirError(f"Cannot write {str(path)!r} ({e.strerror or e}); "
                       "pass a writable --workdir or free some space") from e
