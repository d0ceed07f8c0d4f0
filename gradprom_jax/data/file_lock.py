"""An exclusive lock on a file that dies with its holder, and says who holds it.

`FileLock` takes ``fcntl.flock`` on a lock file and writes the holder's host and pid into it, so a
refused or waiting process can name who it waits for. The kernel drops the lock when the holder's
file descriptor closes, which includes every way a process can die (exit, exception, SIGKILL, OOM
killer, a preempted node): there is no stale lock to clean up by hand. The file itself is never
deleted (deleting a lock file lets a third process lock a fresh inode while a second still waits
on the old one); a left-over file without a holder is simply taken by the next process.

Filesystems:
  * Local disks, GPFS, BeeGFS and NFS (v4, or v3 with lockd) lock across hosts; on NFS, Linux maps
    ``flock`` to a byte-range lock held by the server, and a crashed client's lock is released when
    its lease expires (NFSv4: about 90 s), so a resubmission right after a node crash may wait that
    long or be refused once.
  * NFS mounted with ``nolock`` or ``local_lock=flock|all`` locks only within one host: two hosts
    then both get the lock. Nothing in the API can detect that.
  * Lustre mounted without ``-o flock`` (or ``localflock``) answers ENOSYS: the lock is skipped with
    a warning (``acquire`` returns False) rather than stopping the run.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

# Errors meaning "this filesystem does not do flock", not "someone else holds it".
_UNSUPPORTED = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)


def _this_holder() -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid()}


class FileLock:
  """``flock(LOCK_EX)`` on ``path``, recording ``{"host", "pid"}`` of the holder in the file.

  Locks are per open file, so a second `FileLock` on the same path is refused even in the same
  process:

  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), "run.lock")
  >>> first, second = FileLock(path), FileLock(path)
  >>> first.acquire(blocking=False), second.acquire(blocking=False)
  (True, False)
  >>> second.holder()["pid"] == os.getpid()
  True
  >>> first.release()
  >>> second.acquire(blocking=False)
  True
  >>> second.release()
  """

  def __init__(self, path: str | os.PathLike[str]):
    self.path = Path(path)
    self._fd: int | None = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def holder(self) -> dict[str, Any]:
    """What the current (or last) holder wrote: ``{"host", "pid"}``, or {} if unreadable."""
    try:
      return json.loads(self.path.read_text() or "{}")
    except (OSError, ValueError):
      return {}

  def acquire(self, blocking: bool = True) -> bool:
    """Takes the lock; True once held (or skipped on a filesystem without flock, with a warning).

    With ``blocking=False``, returns False at once if another open file holds it.
    """
    if self._fd is not None:
      raise RuntimeError(f"{self.path} is already held by this FileLock")
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
      os.close(fd)
      return False
    except OSError as e:
      os.close(fd)
      if e.errno not in _UNSUPPORTED:
        raise
      logging.warning("%s: this filesystem does not support flock (%s); continuing without the "
                      "lock, so nothing stops two processes from using it at once.",
                      self.path, e.strerror)
      return True
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_this_holder()).encode(), 0)
    self._fd = fd
    return True

  def release(self) -> None:
    """Releases the lock (closing the file does it); the file stays for the next holder."""
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> FileLock:
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


def describe_holder(holder: dict[str, Any]) -> str:
  """``host <name>, pid <n>`` for a `FileLock.holder()` record.

  >>> describe_holder({"host": "node7", "pid": 4242})
  'host node7, pid 4242'
  >>> describe_holder({})
  'host ?, pid ?'
  """
  return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}"
