"""Graceful stop on SIGTERM/SIGINT: the train loop polls a flag, saves a checkpoint and exits.

Clusters preempt with SIGTERM and kill a few seconds (SLURM: `--signal`/`KillWait`, 30 s by
default) later. Doing the save inside the signal handler would run orbax at an arbitrary point of
the loop, so the handler only sets a flag; the loop polls it after each step, saves with
`force=True`, waits for the write and returns. A second SIGINT (Ctrl-C twice) aborts at once.

Polling never blocks a single-process run: it reads a Python flag, so the host keeps dispatching
steps ahead of the device. A multi-host run must stop every host at the same step. Under
`jax.distributed` (with its preemption service, on by default) JAX installs its own SIGTERM handler,
which tells the coordination service; `multihost_utils.reached_preemption_sync_point(step)` then
returns True on every host at the same step. That check reads a local flag (no device work, no
collective), so it runs at every step, and this guard installs no handler that would replace
JAX's. Without the service it falls back to the signal flag and a blocking all-gather of it, done
only every ``check_every`` steps and at steps where the loop already waits for the device
(logging, checkpointing).

Typical use in the loop::

  with PreemptionGuard() as guard:
    for step in range(start, total):
      state = train_step(state, next(batches))
      if guard.should_stop_all_hosts(step + 1):
        checkpointer.save(step, state, batches, force=True)
        break
  checkpointer.wait_until_finished()
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Context manager that turns SIGTERM/SIGINT into a flag polled with `should_stop()`.

  Handlers are installed on entry (main thread only: Python delivers signals there) and the
  previous handlers are restored on exit; on a multi-host run with JAX's preemption service none
  are (JAX's SIGTERM handler must stay: it is what tells the other hosts).

  >>> import os, signal
  >>> with PreemptionGuard() as guard:
  ...   before = guard.should_stop()
  ...   os.kill(os.getpid(), signal.SIGTERM)
  ...   after = guard.should_stop()
  >>> before, after, guard.signal_name
  (False, True, 'SIGTERM')
  """

  def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT), *,
               check_every: int = 1):
    if check_every < 1:
      raise ValueError(f"check_every={check_every} must be >= 1")
    self.check_every = check_every
    self._signals = tuple(signals)
    self._stop = threading.Event()
    self._previous: dict[signal.Signals, object] = {}
    self.signal_name: str | None = None
    self._jax_sync_point = False

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is not threading.main_thread():
      raise RuntimeError("PreemptionGuard must be entered in the main thread "
                         "(Python only delivers signals there)")
    self._jax_sync_point = jax.process_count() > 1 and jax_preemption_service_running()
    if self._jax_sync_point:
      logging.info("Preemption: JAX's sync point (SIGTERM on any host stops every host).")
      return self
    for sig in self._signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    name = signal.Signals(signum).name
    if self._stop.is_set() and signum == signal.SIGINT:
      raise KeyboardInterrupt(f"second {name}: aborting without waiting for a checkpoint")
    self.signal_name = name
    self._stop.set()
    # logging is not async-signal-safe in general, but CPython runs this handler between
    # bytecodes of the main thread, where logging is fine.
    logging.warning("Received %s: will save a checkpoint and stop after the current step.", name)

  def request_stop(self) -> None:
    """Sets the flag without a signal (for tests, or a loop that decides to stop itself)."""
    self._stop.set()

  def should_stop(self) -> bool:
    """Whether this process received a stop signal."""
    return self._stop.is_set()

  def should_stop_all_hosts(self, step: int | None = None, *, sync: bool = False) -> bool:
    """Whether any process received a stop signal; all processes must call it at the same steps.

    On a cluster each host gets SIGTERM at a slightly different moment; every host must stop (and
    join the collective checkpoint save) at the same step. Under JAX's preemption service this is
    `reached_preemption_sync_point(step)`, which must be called at every step (and ``step`` given).
    Without it, a tiny all-gather of the flags, which blocks until every host has dispatched this
    far, so it runs only when ``step`` is a multiple of ``check_every``, when ``sync`` (a step
    where the loop waits for the device anyway) or when no ``step`` is given; otherwise this
    returns False. With a single process this is just `should_stop()`, at every step: no host
    synchronisation at all.
    """
    if jax.process_count() == 1:
      return self.should_stop()
    if self._jax_sync_point and step is not None:
      if not multihost_utils.reached_preemption_sync_point(step):
        return False
      self.signal_name = self.signal_name or "SIGTERM"
      self._stop.set()
      return True
    if not (sync or step is None or step % self.check_every == 0):
      return False
    flags = multihost_utils.process_allgather(np.int32(self.should_stop()))
    return bool(np.any(flags))


def jax_preemption_service_running() -> bool:
  """Whether `jax.distributed` runs with its preemption service (JAX then handles SIGTERM).

  >>> jax_preemption_service_running()   # a single process, never initialised
  False
  """
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)
