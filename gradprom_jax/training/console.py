"""What a command-line run prints: our progress and results, not the libraries' chatter.

Orbax, TFDS, grain and JAX log at INFO about every checkpoint, file and backend, and TFDS warns
about things a user cannot act on here (no OpenCV, so PIL decodes; a custom builder config; a
variant folder without metadata while it is being built). :func:`hide_library_noise` drops those
records from absl's handler; errors always show, and the other libraries' warnings too. absl's ``--verbosity=1`` (or
``-v 1``) shows everything.
"""
from __future__ import annotations

import logging

from absl import logging as absl_logging

_CHATTY_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/_src/")
# Libraries whose warnings are noise for a run of this project (they name nothing to fix).
_WARNING_NOISE_LIBRARIES = ("/tensorflow_datasets/",)


class LibraryNoiseFilter(logging.Filter):
  """Drops INFO (and TFDS's warnings) logged from inside the chatty libraries.

  >>> noisy = logging.LogRecord("absl", logging.WARNING, "/x/tensorflow_datasets/core/image.py", 1,
  ...                           "OpenCV is not installed.", None, None)
  >>> ours = logging.LogRecord("absl", logging.INFO, "/x/gradprom_jax/training/train.py", 1, "Resuming.",
  ...                          None, None)
  >>> LibraryNoiseFilter().filter(noisy), LibraryNoiseFilter().filter(ours)
  (False, True)
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    libraries = (_WARNING_NOISE_LIBRARIES if record.levelno >= logging.WARNING
                 else _CHATTY_LIBRARIES)
    return not any(name in record.pathname for name in libraries)


def hide_library_noise() -> None:
  """Installs :class:`LibraryNoiseFilter` on absl's handler, unless absl's verbosity is DEBUG."""
  if absl_logging.get_verbosity() >= absl_logging.DEBUG:
    return
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, LibraryNoiseFilter) for f in handler.filters):
    handler.addFilter(LibraryNoiseFilter())
