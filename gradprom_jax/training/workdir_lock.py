"""One live run per workdir: a second run on a workdir in use is refused with the holder's host and pid.

Two runs on one workdir would interleave their checkpoints (orbax then fails to delete a step the
other run wrote) and both append to ``metrics.jsonl``. The claim is a `FileLock` on
``<workdir>/run.lock``, so it dies with the run however it ends: resubmitting after a SIGKILL,
an out-of-memory kill or a preempted node resumes at once, with no stale lock to remove. See
:mod:`gradprom_jax.data.file_lock` for the filesystems (NFS, Lustre) on which ``flock`` is weaker.

Only process 0 of a multi-host run takes it: the other hosts write nothing of their own to the
workdir, and on a shared filesystem they would otherwise refuse each other. Its refusal stops
every host: `train_and_evaluate` takes it inside `host_agreement.fail_together`.
"""
from __future__ import annotations

import os
from pathlib import Path

from gradprom_jax.data.file_lock import FileLock, describe_holder

LOCK_FILENAME = "run.lock"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def lock_workdir(workdir: str | os.PathLike[str], *, enabled: bool = True) -> FileLock | None:
  """Claims ``workdir`` for this process until the returned lock is released or the process ends.

  Raises:
    WorkdirLockedError: another process holds it; the message names its host and pid.

  >>> import tempfile
  >>> workdir = tempfile.mkdtemp()
  >>> lock = lock_workdir(workdir)
  >>> lock_workdir(workdir)  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  gradprom_jax.training.workdir_lock.WorkdirLockedError: workdir ... is in use by another run (host ..., pid ...); wait for it to end or stop it, or pass another --workdir
  >>> lock.release()
  >>> lock_workdir(workdir).release()
  >>> lock_workdir(workdir, enabled=False) is None
  True
  """
  if not enabled:
    return None
  lock = FileLock(Path(workdir) / LOCK_FILENAME)
  if not lock.acquire(blocking=False):
    raise WorkdirLockedError(
        f"workdir {str(workdir)!r} is in use by another run ({describe_holder(lock.holder())}); "
        "wait for it to end or stop it, or pass another --workdir")
  return lock
