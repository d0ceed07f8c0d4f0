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
from gradprom_jax.configuration.config import base_config
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


def added_key_defaults() -> dict[str, Any]:
  """Every registered method's options and every dataset's own keys with their defaults: a stored
  config that lacks one counts as holding its default, so registering a method, a dataset or an
  option adds no difference to runs made before it (an option defaults to how the code behaved
  without it; see :class:`gradprom_jax.methods.Method`,
  `gradprom_jax.data.registry.dataset_key_defaults`). Any other key missing from a stored config
  means older code wrote it: :func:`check_stored_config` refuses that workdir in one line.

  >>> added_key_defaults()["gradprom.cosine_ema"], added_key_defaults()["cagrad.c"]
  (0.0, 0.4)
  """
  return {**dataset_key_defaults(), **methods.option_defaults()}


class ConfigMismatchError(ValueError):
  """The workdir holds a run with a different config."""


def keys_missing_from(stored: Any) -> list[str]:
  """The keys of today's config that a stored run's config lacks, besides those that depend on the
  models and tasks chosen (``model.*``, ``task.*``), :func:`added_key_defaults`'s and the
  `RESUMABLE_KEYS` (free to change on any resume): a run written by older code. Empty for every committed run (their config.json were migrated once).

  >>> from gradprom_jax.configuration.config import base_config
  >>> keys_missing_from(base_config().to_dict())
  []
  >>> stored = base_config().to_dict(); del stored["optim"]["ema_decay"]
  >>> keys_missing_from(stored)
  ['optim.ema_decay']
  """
  stored_keys, defaults = flatten_config(stored).keys(), added_key_defaults()
  return sorted(key for key in flatten_config(to_plain(base_config()))
                if not key.startswith(("model.", "task.")) and key not in stored_keys
                and key not in defaults
                and not any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS))


def read_stored_config(workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """A finished or running run's ``config.json``, refused in one line if older code wrote it.

  Raises:
    ConfigMismatchError: keys the code reads are missing (see :func:`keys_missing_from`).
  """
  path = Path(workdir) / CONFIG_FILENAME
  stored = json.loads(path.read_text())
  missing = keys_missing_from(stored)
  if missing:
    raise ConfigMismatchError(
        f"{str(path)!r} was written by an older gradprom_jax (it lacks {', '.join(missing[:3])}"
        f"{', ...' if len(missing) > 3 else ''}): use the version that wrote it for this run.")
  return stored


def config_differences(old: Any, new: Any, *, ignore: Iterable[str] = RESUMABLE_KEYS) -> list[str]:
  """Lines ``key: old -> new`` for every differing dotted key not matching an `ignore` pattern.

  A key of :func:`added_key_defaults` missing from ``old`` counts as holding its value there.

  >>> config_differences({"lr": 0.1, "log_every": 10, "seed": 0},
  ...                    {"lr": 0.2, "log_every": 50})
  ['lr: 0.1 -> 0.2', 'seed: 0 -> <missing>']
  >>> config_differences({"lr": 0.1}, {"lr": 0.1, "gradprom": {"task_scale": "none"}})
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
    keys = [line.split(":")[0] for line in differences if "<missing>" in line]
    if len(keys) == len(differences):   # keys added or removed since, no value changed
      raise ConfigMismatchError(
          f"{str(path)!r} was written by another version of gradprom_jax (keys added or removed "
          f"since: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}): finish that run with "
          "the version that wrote it, or use a new --workdir.")
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
