"""JAX's persistent compilation cache for command-line runs, on by default, size-capped.

Compiling the train step takes most of a short run's first minutes; with the cache, a second run of
the same config (another seed, a resumed run, a re-run after a fix elsewhere) loads the compiled
programs from disk instead. The cache changes no result, only time.

Where it lives, first match wins:

* ``$JAX_COMPILATION_CACHE_DIR``: JAX's own setting (``experiments/compare.py`` sets it);
* ``$GRADPROM_COMPILATION_CACHE``: a directory, or ``off`` (also ``0``, ``false``, ``none`` or
  empty) to compile afresh every time;
* ``~/.cache/gradprom_jax/jax`` (``$XDG_CACHE_HOME/gradprom_jax/jax`` when that is set), for a
  single-process run only.

A multi-host run needs one of the two variables, naming a directory on a filesystem every host
shares: JAX writes the cache from process 0 only, so a per-host home cache would serve the other
hosts nothing. Without one the cache is off, with one warning line.

Its size is capped at ``$GRADPROM_COMPILATION_CACHE_MAX_GB`` (default 8; ``0`` for no cap): at
start, the least recently written entries are deleted until the rest fit. (JAX's own
``jax_compilation_cache_max_size`` needs the ``filelock`` package and keeps access-time files.)
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import jax

CACHE_ENV = "GRADPROM_COMPILATION_CACHE"
JAX_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
MAX_SIZE_ENV = "GRADPROM_COMPILATION_CACHE_MAX_GB"
DEFAULT_MAX_GB = 8.0
OFF_VALUES = ("", "0", "off", "false", "none")


def compilation_cache_dir(environ: Mapping[str, str] = os.environ, *,
                          multi_host: bool = False) -> Path | None:
  """The cache directory the environment asks for, or None when the cache is off.

  >>> compilation_cache_dir({"GRADPROM_COMPILATION_CACHE": "/tmp/jax_cache"})
  PosixPath('/tmp/jax_cache')
  >>> print(compilation_cache_dir({"GRADPROM_COMPILATION_CACHE": "off"}))
  None
  >>> compilation_cache_dir({"XDG_CACHE_HOME": "/cache"})
  PosixPath('/cache/gradprom_jax/jax')
  >>> print(compilation_cache_dir({"XDG_CACHE_HOME": "/cache"}, multi_host=True))
  None
  """
  if environ.get(JAX_CACHE_ENV):
    return Path(environ[JAX_CACHE_ENV]).expanduser()
  if CACHE_ENV in environ:
    value = environ[CACHE_ENV].strip()
    return None if value.lower() in OFF_VALUES else Path(value).expanduser()
  if multi_host:
    return None   # The per-host default would be written on process 0's host alone.
  cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(cache_home) / "gradprom_jax" / "jax"


def max_cache_bytes(environ: Mapping[str, str] = os.environ) -> int | None:
  """The cap on the cache's size in bytes, or None for no cap.

  >>> max_cache_bytes({"GRADPROM_COMPILATION_CACHE_MAX_GB": "0.5"})
  500000000
  >>> print(max_cache_bytes({"GRADPROM_COMPILATION_CACHE_MAX_GB": "0"}))
  None
  """
  gigabytes = float(environ.get(MAX_SIZE_ENV, DEFAULT_MAX_GB))
  return int(gigabytes * 1e9) if gigabytes > 0 else None


def prune_cache(directory: str | os.PathLike[str], max_bytes: int) -> list[Path]:
  """Deletes the least recently written files of ``directory`` until the rest fit in ``max_bytes``.

  Returns the deleted files. A file another run deletes first is skipped.

  >>> import tempfile
  >>> directory = Path(tempfile.mkdtemp())
  >>> for i, name in enumerate(["old", "new"]):
  ...   _ = (directory / name).write_bytes(b"x" * 10)
  ...   os.utime(directory / name, (i, i))
  >>> [path.name for path in prune_cache(directory, max_bytes=15)]
  ['old']
  """
  entries = []
  for path in Path(directory).iterdir():
    try:
      stat = path.stat()
    except OSError:
      continue
    if path.is_file():
      entries.append((stat.st_mtime, stat.st_size, path))
  total = sum(size for _, size, _ in entries)
  deleted = []
  for _, size, path in sorted(entries):
    if total <= max_bytes:
      break
    try:
      path.unlink()
    except FileNotFoundError:
      pass
    total -= size
    deleted.append(path)
  return deleted


def enable_compilation_cache(environ: Mapping[str, str] = os.environ) -> Path | None:
  """Points JAX's persistent cache at :func:`compilation_cache_dir`; call before compiling (and
  after `jax.distributed` is initialised, so that a multi-host run is known as one).

  Returns the directory, or None when the cache is off (JAX's setting is then left alone).
  """
  multi_host = jax.process_count() > 1
  directory = compilation_cache_dir(environ, multi_host=multi_host)
  if directory is None:
    if multi_host and CACHE_ENV not in environ:
      logging.warning("Compilation cache off: a multi-host run needs %s=DIR on a filesystem every "
                      "host shares (JAX writes it from process 0 only).", CACHE_ENV)
    return None
  max_bytes = max_cache_bytes(environ)
  if max_bytes is not None and jax.process_index() == 0 and directory.is_dir():
    deleted = prune_cache(directory, max_bytes)
    if deleted:
      logging.info("Compilation cache: deleted %d oldest entries to stay under %.1f GB.",
                   len(deleted), max_bytes / 1e9)
  # JAX's default threshold (cache compiles over 1 s) keeps the train and eval steps and skips
  # the small programs, which are cheaper to recompile than to look up.
  jax.config.update("jax_compilation_cache_dir", str(directory))
  return directory
