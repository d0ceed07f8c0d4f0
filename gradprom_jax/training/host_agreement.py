"""Every host of a run fails together: a failure on one host is raised on all of them.

A check that fails on one host alone (a workdir it cannot write, a dataset missing from its disk,
the workdir lock, which only process 0 takes) would otherwise leave the other hosts waiting in
their first collective until JAX's heartbeat timeout. Code that may fail on some hosts only runs
inside :func:`fail_together`; at its end the hosts exchange their outcome (one small all-gather of
bytes, no device work) and, if any failed, each raises the same :class:`HostFailureError` naming
the first failed process and its error, so that every host exits with the same status and line.

With one process nothing is exchanged and the error propagates unchanged.

>>> with fail_together():
...   checked = True
>>> checked
True
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

# Longer messages are cut: one line on the console is the aim, and every host sends this many bytes.
MESSAGE_BYTES = 1024
_SEPARATOR = "\0"


class HostFailureError(RuntimeError):
  """A process of a multi-host run failed; every process raises this same error.

  Attributes:
    process_index: the first process (lowest index) that failed.
    error_type: the class name of its exception (e.g. ``"WorkdirError"``).
    message: its message.
  """

  def __init__(self, process_index: int, error_type: str, message: str):
    super().__init__(f"process {process_index}: {error_type}: {message}")
    self.process_index, self.error_type, self.message = process_index, error_type, message


def encode_outcome(error: BaseException | None) -> np.ndarray:
  """This host's outcome as ``MESSAGE_BYTES`` bytes: 0s when it succeeded, else ``type\\0message``.

  >>> decode_outcome(encode_outcome(ValueError("bad value")))
  ('ValueError', 'bad value')
  >>> print(decode_outcome(encode_outcome(None)))
  None
  """
  outcome = np.zeros(MESSAGE_BYTES, np.uint8)
  if error is not None:
    text = f"{type(error).__name__}{_SEPARATOR}{error}".encode()[:MESSAGE_BYTES - 1]
    outcome[0] = 1
    outcome[1:1 + len(text)] = np.frombuffer(text, np.uint8)
  return outcome


def decode_outcome(outcome: np.ndarray) -> tuple[str, str] | None:
  """The (error type, message) :func:`encode_outcome` wrote, or None for a success."""
  if not outcome[0]:
    return None
  text = bytes(np.asarray(outcome[1:], np.uint8)).rstrip(b"\0").decode(errors="replace")
  error_type, _, message = text.partition(_SEPARATOR)
  return error_type, message


@contextlib.contextmanager
def fail_together() -> Iterator[None]:
  """Runs the block on every host; raises :class:`HostFailureError` on all if it failed on any.

  Every process must enter and leave it at the same point of the program (the exchange is a
  collective). A failure other than an `Exception` (Ctrl-C, `sys.exit`) propagates without one.
  """
  error = None
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # Any failure: agree on it first.
    if jax.process_count() == 1:
      raise
    error = e
    logging.exception("Failed on this host; telling the others before exiting.")
  if jax.process_count() == 1:
    return
  outcomes = multihost_utils.process_allgather(encode_outcome(error))
  for process_index, outcome in enumerate(outcomes):
    failure = decode_outcome(outcome)
    if failure is not None:
      raise HostFailureError(process_index, *failure) from error
