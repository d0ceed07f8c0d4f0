"""Preemption-safe checkpoints of the train state and the data iterator position.

`Checkpointer` is a thin layer over `orbax.checkpoint.CheckpointManager` that adds what a
research run needs on a shared cluster:

* the train state (any pytree: params, optax states, int32 step, PRNG keys, typed or raw) and a
  grain iterator's position are saved together, asynchronously, every `save_interval_steps`;
* `restore_latest` walks back from the newest checkpoint: a truncated or corrupt one is reported
  with a warning, moved aside (renamed ``<step>.corrupt``) and the next newest is tried. It returns
  None only when the directory holds no checkpoint at all, and raises when checkpoints exist but
  none restores, so a run never silently starts from scratch;
* on several hosts the walk is agreed: every host tries the same step, the hosts all-gather
  whether they restored it, and all take the newest step that every host restored (one host's
  transient read error moves every host back, never that host alone);
* the data position restores on another host count too: the input pipeline's position is the
  number of global batches read, the same on every host, so any host's saved position fits;
  positions that differ between the saving hosts are refused in one line naming both counts;
* each saved leaf carries a fingerprint (a position-weighted sum of its bits, computed on device,
  so sharded arrays cost no host gather) that is checked on restore: orbax itself does not notice
  flipped bytes inside a chunk and would hand back wrong numbers;
* an unwritable (or full) directory raises `WorkdirError` naming the path, before training starts;
* with ``best_metric``, one directory keeps the newest ``max_to_keep`` checkpoints and the best
  by the metrics given to `save` (an orbax preservation policy), so a step that is both periodic
  and best is written once; an evaluation that beats the best is saved even off the interval.

`restore_field_from_run` reads one field of another run's newest train state (its recogniser or
enhancer parameters) without writing to that run: warm starts and the judge use it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import grain.checkpoint as grain_checkpoint
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

_STATE, _DATA, _FINGERPRINTS = "state", "data", "fingerprints"


class WorkdirError(OSError):
  """The work directory cannot be created or written (read-only, full, or a file in the way)."""


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none of them could be restored."""


class HostCountError(CheckpointRestoreError):
  """The saved data position cannot be mapped to this run's number of hosts."""


class SourceRunError(RuntimeError):
  """Another run's checkpoint, named in the config (an init_from, the judge), is missing or does
  not fit this run's model."""


def ensure_writable_directory(path: str | os.PathLike[str]) -> Path:
  """Creates `path` if needed and proves it writable by writing and deleting a probe file.

  Checking up front turns "permission denied" or "no space left" deep inside an asynchronous
  orbax save, minutes into a run, into an immediate error that names the directory.

  >>> import tempfile
  >>> ensure_writable_directory(tempfile.mkdtemp() + "/run/checkpoints").name
  'checkpoints'
  """
  path = Path(path).expanduser().absolute()
  probe = path / f".write_probe_{os.getpid()}_{uuid.uuid4().hex[:8]}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    with open(probe, "wb") as f:
      f.write(b"gradprom")  # Non-empty: a full disk fails here rather than at the first save.
      f.flush()
      os.fsync(f.fileno())
    probe.unlink()
  except OSError as e:
    raise WorkdirError(
        f"Directory {str(path)!r} is not writable ({e.strerror or e}); "
        "pass a writable --workdir or free some space") from e
  return path


def _key_safe_bits(x: jax.Array) -> jax.Array:
  """The raw bits of `x` as a flat uint32 vector, whatever its dtype (typed keys included)."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.iscomplexobj(x):
    x = jnp.stack([x.real, x.imag], axis=-1)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32).ravel()
  bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
  return bits.astype(jnp.uint32).ravel()


@jax.jit
def _fingerprints(tree: Any) -> Any:
  """One uint32 per leaf: sum_i bits_i * (2 * (i mod 65521) + 1), wrapping modulo 2**32.

  The weights are odd, so changing any single element (any bit pattern) changes the sum, and
  position-dependent, so swapped elements do too.
  """

  def fingerprint(x):
    bits = _key_safe_bits(x)
    weights = 2 * (jnp.arange(bits.size, dtype=jnp.uint32) % 65521) + 1
    return jnp.sum(bits * weights, dtype=jnp.uint32)

  return jax.tree.map(fingerprint, tree)


def _fingerprint_dict(tree: Any) -> dict[str, int]:
  """Leaf path -> fingerprint, as a JSON-ready dict (the result is replicated, so any host reads it).

  >>> _fingerprint_dict({"b": jnp.ones(2, jnp.int32), "a": jnp.zeros(3)})
  {"['a']": 0, "['b']": 4}
  """
  prints = jax.device_get(_fingerprints(tree))   # one transfer for the whole tree
  return {jax.tree_util.keystr(path): int(value)
          for path, value in jax.tree_util.tree_leaves_with_path(prints)}


def best_score_fn(metric: str):
  """``metrics -> score`` (higher is better) for ``metric``; a ``"-"`` prefix means lower is better.

  A NaN scores lowest, so it is never kept over a number.

  >>> best_score_fn("-loss")({"loss": 0.5}), best_score_fn("dice")({"dice": float("nan")})
  (-0.5, -inf)
  """
  name, sign = (metric[1:], -1.0) if metric.startswith("-") else (metric, 1.0)

  def score(metrics: dict[str, float]) -> float:
    value = sign * float(metrics[name])
    return -math.inf if math.isnan(value) else value
  return score


def _abstract(target: Any) -> Any:
  """ShapeDtypeStructs (keeping shardings) for the restore target; structs pass through."""
  return jax.tree.map(
      lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else ocp.utils.to_shape_dtype_struct(x),
      target)


def _all_hosts_agree(ok: bool) -> bool:
  """Whether `ok` holds on every host: one all-gather, so every host gets the same answer."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _steps_on_every_host(steps: list[int]) -> tuple[list[int], int | None]:
  """(steps every host lists, newest first; the newest step any host lists), the same on all hosts.

  A host whose file system shows it a step the others miss cannot restore that step together
  with them, so only the common ones are tried.
  """
  if jax.process_count() == 1:
    return sorted(steps, reverse=True), max(steps, default=None)
  longest = int(np.max(multihost_utils.process_allgather(np.int32(len(steps)))))
  if longest == 0:
    return [], None
  padded = np.full(longest, -1, np.int32)
  padded[:len(steps)] = steps
  listed = multihost_utils.process_allgather(padded)   # (hosts, longest)
  common = set.intersection(*(set(row[row >= 0].tolist()) for row in listed))
  return sorted(common, reverse=True), int(listed.max())


_DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


def _saved_data_position(directory: Path) -> str:
  """This host's saved iterator state (JSON text), mapped from another host count if need be.

  The train loader's position is the number of global batches read (each host reads its slice of
  every global batch), so every saving host wrote the same state and any of them fits any host
  count that divides the batch. A position that differs between the saving hosts belongs to
  another kind of iterator and is refused.
  """
  process, count = jax.process_index(), jax.process_count()
  own = directory / f"process_{process}-of-{count}.json"
  if own.exists():
    return own.read_text()
  files = {int(m[1]): (int(m[2]), f) for f in directory.iterdir()
           if (m := _DATA_FILE.fullmatch(f.name))}
  saved_counts = {saved_count for saved_count, _ in files.values()}
  if len(saved_counts) != 1:
    raise ValueError(f"no data position for process {process} of {count} in {directory}")
  saved_count = saved_counts.pop()
  if len(files) != saved_count:   # damage, not a host count: an older step may be whole
    raise ValueError(f"{directory} holds the data positions of {len(files)} of {saved_count} hosts")
  states = [json.loads(f.read_text()) for _, f in files.values()]
  if any(state != states[0] for state in states):
    raise HostCountError(
        f"the checkpoint in {directory.parent} was saved by {saved_count} host(s) whose data "
        f"positions differ, and cannot resume on {count}; run it on {saved_count} host(s)")
  logging.info("Data position saved by %d host(s) restored on %d.", saved_count, count)
  return files[min(files)][1].read_text()


def _set_position(iterator: Iterator, state: str) -> None:
  """What grain's checkpoint handler does with a saved state: a dict for its own iterators."""
  iterator.set_state(json.loads(state) if isinstance(iterator, grain.DatasetIterator)
                     else state.encode())
  iterator.start_prefetch()


class Checkpointer:
  """Saves and restores the train state and the data iterator position in one directory.

  Args:
    directory: where the numbered step directories go (created; must be writable).
    save_interval_steps: `save` writes only on multiples of this, unless forced or a new best.
    max_to_keep: how many of the newest checkpoints to keep.
    async_save: write in a background thread so training continues during the write.
    best_metric: also keep the checkpoint that scores best on this key of the metrics given to
      `save` (see :func:`best_score_fn`), however old; `best_step` names it.

  Raises:
    WorkdirError: when `directory` cannot be created or written.

  >>> import tempfile, jax.numpy as jnp
  >>> ckpt = Checkpointer(tempfile.mkdtemp(), save_interval_steps=10, async_save=False)
  >>> state = {"w": jnp.ones(3), "step": jnp.int32(10)}
  >>> ckpt.save(10, state), ckpt.save(11, state)
  (True, False)
  >>> restored, step = ckpt.restore_latest(state)
  >>> step, restored["w"].tolist()
  (10, [1.0, 1.0, 1.0])
  >>> ckpt.close()
  """

  def __init__(self, directory: str | os.PathLike[str], *, save_interval_steps: int,
               max_to_keep: int = 3, async_save: bool = True, best_metric: str | None = None):
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    if max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
    self.directory = ensure_writable_directory(directory)
    self._score = None if best_metric is None else best_score_fn(best_metric)
    keep = ocp.checkpoint_managers.LatestN(n=max_to_keep)
    if self._score is not None:
      # Checkpoints saved without metrics (periodic ones between evaluations) are never "best".
      keep = ocp.checkpoint_managers.AnyPreservationPolicy([keep, ocp.checkpoint_managers.BestN(
          get_metric_fn=self._score, n=1, keep_checkpoints_without_metrics=False)])
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            create=True,
            best_fn=self._score,   # orbax writes the metrics and ranks by them
            best_mode="max",
            preservation_policy=keep,
        ))
    self._state_reader = ocp.StandardCheckpointHandler()
    self._best_score = self._saved_best_score()

  def latest_step(self) -> int | None:
    """The newest saved step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """All saved steps, oldest first."""
    return sorted(self._manager.all_steps())

  def best_step(self) -> int | None:
    """The best-scoring saved step (the newest without ``best_metric``), or None when there is none."""
    return self._manager.best_step()

  def _saved_best_score(self) -> float | None:
    best = self._manager.best_step() if self._score is not None else None
    metrics = None if best is None else self._manager.metrics(best)
    return None if metrics is None else self._score(metrics)

  def _is_new_best(self, metrics: dict[str, float] | None) -> bool:
    return (self._score is not None and metrics is not None
            and (self._best_score is None or self._score(metrics) > self._best_score))

  def save(self, step: int, state: Any, data_iterator: Iterator | None = None, *,
           force: bool = False, metrics: dict[str, float] | None = None) -> bool:
    """Saves `state` (and the iterator's position) at `step` if due; returns whether it did.

    Due: on the interval, with `force=True` (at the end of training, or on preemption), or when
    `metrics` beat the best kept checkpoint's on ``best_metric``. A step that is already saved is
    not written twice.
    """
    step = int(step)
    if step in self._manager.all_steps():
      return False
    new_best = self._is_new_best(metrics)
    if not (force or new_best or self._manager.should_save(step)):
      return False
    items = {
        _STATE: ocp.args.StandardSave(state),
        _FINGERPRINTS: ocp.args.JsonSave(_fingerprint_dict(state)),
    }
    if data_iterator is not None:
      items[_DATA] = grain_checkpoint.CheckpointSave(data_iterator)
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force or new_best,
                                 metrics=metrics)
    except OSError as e:
      raise self._workdir_error(e) from e
    if saved and new_best:
      self._best_score = self._score(metrics)
    return saved

  def restore_latest(self, target_state: Any, data_iterator: Iterator | None = None
                     ) -> tuple[Any, int] | None:
    """Restores the newest good checkpoint into the structure and shardings of `target_state`.

    `target_state` may hold arrays or `jax.ShapeDtypeStruct`s (with `sharding=` for a mesh);
    restored arrays get those shardings. `data_iterator`, if given, is moved to the saved
    position in place. Corrupt checkpoints are skipped with a warning and renamed
    ``<step>.corrupt`` so that the resumed run can save those step numbers again. On several
    hosts, all of them end on the same step: the newest one that every host restored.

    Returns:
      `(state, step)`, or None when the directory holds no checkpoint.

    Raises:
      CheckpointRestoreError: checkpoints exist but none restores (never start from scratch).
      HostCountError: the data position was saved on another host count and cannot be mapped.
    """
    self.wait_until_finished()
    steps, newest = _steps_on_every_host(list(self._manager.all_steps()))
    if newest is None:
      return None
    state, step = self._restore_first_good(steps, _abstract(target_state), data_iterator)
    if step != newest:   # the same on every host, so all of them reach the barrier or none
      self._set_aside(step)
    logging.info("Restored checkpoint at step %d from %s", step, self.directory)
    return state, step

  def restore_best(self, target_state: Any) -> tuple[Any, int]:
    """The best-scoring checkpoint's state (not the data position) and its step.

    Raises:
      CheckpointRestoreError: there is no checkpoint, or the best one does not restore.
    """
    self.wait_until_finished()
    best = self.best_step()
    if best is None:
      raise CheckpointRestoreError(f"{self.directory} holds no checkpoint")
    return self._restore_first_good([best], _abstract(target_state), None)

  def _restore_first_good(self, steps: list[int], abstract: Any,
                          data_iterator: Iterator | None) -> tuple[Any, int]:
    """The first of `steps` that every host restores, with its fingerprints checked."""
    failures = []
    for step in steps:
      error = None
      try:
        state, saved_prints = self._read(step, abstract, data_iterator)
      except HostCountError:
        raise   # not damage: an older step would fail alike, and must not be set aside for it
      except Exception as e:  # pylint: disable=broad-except
        # Anything can come out of a damaged checkpoint (tensorstore, json, grain); each failure
        # is reported and, once all hosts know, the next newest is tried.
        error = e
      if _all_hosts_agree(error is None):
        # Every host holds the state now, so the (possibly collective) fingerprints run on all.
        actual = _fingerprint_dict(state)
        bad = sorted(k for k in saved_prints if actual.get(k) != saved_prints[k])
        if bad or saved_prints.keys() != actual.keys():
          error = ValueError(f"fingerprint mismatch (corrupt data) in leaves {bad or 'structure'}")
        if _all_hosts_agree(error is None):
          return state, step
      reason = (f"{type(error).__name__}: {error}" if error is not None
                else "another host could not restore it")
      failures.append(f"step {step}: {reason}")
      warnings.warn(
          f"Checkpoint at step {step} in {self.directory} could not be restored "
          f"({reason[:500]}); falling back to an older checkpoint.", RuntimeWarning, stacklevel=3)
    raise CheckpointRestoreError(
        f"{len(steps)} checkpoint(s) in {self.directory} exist but none could be restored; "
        "refusing to start from scratch (move the directory away to do so):\\n  "
        + "\\n  ".join(failures))

  def _read(self, step: int, abstract: Any, data_iterator: Iterator | None
            ) -> tuple[Any, dict[str, int]]:
    """This host's part of a restore: (state, saved fingerprints); the iterator is moved.

    It reads the items with their handlers rather than through the manager, whose restore ends
    at a barrier that a host failing before it would never reach, stranding the others.
    """
    step_dir = self.directory / str(step)
    state = self._state_reader.restore(step_dir / _STATE,
                                       args=ocp.args.StandardRestore(abstract))
    saved_prints = ocp.JsonCheckpointHandler().restore(step_dir / _FINGERPRINTS,
                                                       args=ocp.args.JsonRestore())
    if data_iterator is not None:
      _set_position(data_iterator, _saved_data_position(step_dir / _DATA))
    return state, saved_prints

  def _set_aside(self, restored_step: int) -> None:
    """Renames step directories newer than the restored one so orbax ignores them and the
    steps can be reused; every host calls it (process 0 renames, the others wait)."""
    if jax.process_index() == 0:
      for step in self._manager.all_steps():
        if step <= restored_step:
          continue
        source = self.directory / str(step)
        target = self.directory / f"{step}.corrupt"
        suffix = 1
        while target.exists():
          target, suffix = self.directory / f"{step}.corrupt{suffix}", suffix + 1
        source.rename(target)
        logging.warning("Moved unrestorable checkpoint %s to %s", source, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("gradprom_checkpoint_set_aside")
    self._manager.reload()
    self._best_score = self._saved_best_score()

  def wait_until_finished(self) -> None:
    """Blocks until an asynchronous save has been written (call before exiting)."""
    try:
      self._manager.wait_until_finished()
    except OSError as e:
      raise self._workdir_error(e) from e

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self.wait_until_finished()
    self._manager.close()
    self._state_reader.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _workdir_error(self, error: OSError) -> WorkdirError:
    return WorkdirError(
        f"Writing a checkpoint to {str(self.directory)!r} failed "
        f"({error.strerror or error}); is the disk full or the directory read-only?")



def _source_checkpoints(run_dir: str | os.PathLike[str]) -> Path:
  """A run's checkpoint directory: ``run_dir/checkpoints``, or ``run_dir`` itself if it holds steps."""
  run_dir = Path(run_dir).expanduser().absolute()
  return run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir


def has_checkpoint(directory: str | os.PathLike[str]) -> bool:
  """Whether ``directory`` holds a finished checkpoint (a resume, not a fresh start); reads only.

  >>> import tempfile
  >>> has_checkpoint(tempfile.mkdtemp()), has_checkpoint("/no/such/dir")
  (False, False)
  """
  directory = Path(directory)
  return directory.is_dir() and bool(_read_only_manager(directory).all_steps())


def _read_only_manager(directory: Path) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory, item_handlers={_STATE: ocp.PyTreeCheckpointHandler(),
                                _FINGERPRINTS: ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0))


def newest_step_of_run(run_dir: str | os.PathLike[str], *, what: str) -> tuple[Path, int]:
  """``(checkpoint directory, newest step)`` of the run in ``run_dir``.

  Raises:
    SourceRunError: no such directory, or no checkpoint in it; the message starts with ``what``.
  """
  directory = _source_checkpoints(run_dir)
  if not directory.is_dir():
    raise SourceRunError(f"{what}: no run directory {str(run_dir)!r}")
  step = _read_only_manager(directory).latest_step()
  if step is None:
    raise SourceRunError(f"{what}: no checkpoint in {str(directory)!r}: train that run first")
  return directory, step


def saved_state_of_run(run_dir: str | os.PathLike[str]) -> tuple[Any, str] | None:
  """``(the saved train state's tree of metadata, its step directory)`` of the newest checkpoint of
  the run in ``run_dir`` (or its ``checkpoints`` directory); None without a readable one. Reads
  no array.

  >>> import tempfile, jax.numpy as jnp
  >>> workdir = tempfile.mkdtemp()
  >>> with Checkpointer(workdir + "/checkpoints", save_interval_steps=1, async_save=False) as ckpt:
  ...   ckpt.save(2, {"params": {"w": jnp.zeros(3)}})
  True
  >>> tree, source = saved_state_of_run(workdir)
  >>> list(tree["params"]), source.endswith("checkpoints/2")
  (['w'], True)
  """
  directory = _source_checkpoints(run_dir)
  step = _read_only_manager(directory).latest_step() if directory.is_dir() else None
  if step is None:
    return None
  step_dir = directory / str(step)
  try:   # the state item's own handler: the manager would warn of the data item it cannot read
    saved = ocp.PyTreeCheckpointHandler().metadata(step_dir / _STATE)
  except Exception:  # pylint: disable=broad-except  # damaged: the restore reports it
    return None
  return getattr(saved, "tree", saved), str(step_dir)


def restore_field_from_run(run_dir: str | os.PathLike[str], field: str, target: Any, *,
                           what: str) -> tuple[Any, int]:
  """One field of the newest train state another run saved, e.g. its ``"recognizer_params"``.

  Only that field is read (orbax partial restore), into the shapes, dtypes and shardings of
  ``target`` (arrays or `jax.ShapeDtypeStruct`s), and checked against the saved fingerprints. The
  source run's directory is never written.

  Args:
    run_dir: the other run's workdir (or its ``checkpoints`` directory).
    field: the train-state field to read.
    target: a pytree of this run's structure for that field.
    what: names the config key in error messages (e.g. ``"recognizer.init_from"``).

  Returns:
    ``(restored field, the step it was saved at)``.

  Raises:
    SourceRunError: no directory, no checkpoint, no such field, or leaves whose structure or shape
      differ from ``target`` (both shapes and the source are named).

  >>> import tempfile, jax.numpy as jnp
  >>> workdir = tempfile.mkdtemp()
  >>> with Checkpointer(workdir + "/checkpoints", save_interval_steps=1, async_save=False) as ckpt:
  ...   ckpt.save(4, {"params": {"w": jnp.arange(3.0)}, "step": jnp.int32(4)})
  True
  >>> params, step = restore_field_from_run(workdir, "params", {"w": jnp.zeros(3)}, what="init")
  >>> step, params["w"].tolist()
  (4, [0.0, 1.0, 2.0])
  >>> restore_field_from_run(workdir, "params", {"w": jnp.zeros(5)}, what="init")
  Traceback (most recent call last):
  ...
  gradprom_jax.training.checkpointing.SourceRunError: init: ['w'] has shape (3,) in ... but (5,) in this run's model
  """
  directory, step = newest_step_of_run(run_dir, what=what)
  manager = _read_only_manager(directory)
  saved = manager.item_metadata(step)[_STATE]
  saved = getattr(saved, "tree", saved)
  source = f"{directory / str(step)}"
  if not isinstance(saved, dict) or field not in saved:
    raise SourceRunError(f"{what}: the checkpoint {source} holds no {field!r}")
  _check_same_shapes(saved[field], target, what=what, source=source)
  abstract = _abstract(target)
  restore_args = jax.tree.map(
      lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape, dtype=x.dtype)
      if x.sharding is not None else ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.PyTreeRestore(item={field: abstract}, restore_args={field: restore_args},
                                       partial_restore=True),
        _FINGERPRINTS: ocp.args.JsonRestore()}))
  except Exception as e:  # pylint: disable=broad-except  # tensorstore, json: name the source
    raise SourceRunError(f"{what}: cannot read {source} ({type(e).__name__}: {str(e)[:300]})") from e
  value, prints = restored[_STATE][field], restored[_FINGERPRINTS]
  # Saved keys start with the field as an attribute (a TrainState) or as a dict key.
  prefix = f".{field}" if any(k.startswith(f".{field}") for k in prints) else f"[{field!r}]"
  actual = {prefix + key: v for key, v in _fingerprint_dict(value).items()}
  bad = sorted(k for k, v in actual.items() if prints.get(k) != v)
  if bad:
    raise SourceRunError(f"{what}: {source} is corrupt (fingerprint mismatch in {bad[:3]})")
  manager.close()
  return value, step


def _check_same_shapes(saved: Any, target: Any, *, what: str, source: str) -> None:
  """Raises SourceRunError naming the first leaf whose presence or shape differs."""
  def shapes(tree):
    return {jax.tree_util.keystr(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  saved_shapes, target_shapes = shapes(saved), shapes(target)
  missing = sorted(target_shapes.keys() - saved_shapes.keys())
  extra = sorted(saved_shapes.keys() - target_shapes.keys())
  if missing or extra:
    raise SourceRunError(
        f"{what}: {source} holds another model (missing here: {missing[:3]}, "
        f"only there: {extra[:3]}); the two runs' model configs must match")
  for key, shape in target_shapes.items():
    if saved_shapes[key] != shape:
      raise SourceRunError(f"{what}: {key} has shape {saved_shapes[key]} in {source} but "
                           f"{shape} in this run's model")
