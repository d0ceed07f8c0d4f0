"""JAX's persistent compilation cache for command-line runs, on by default.

Compiling the train step takes most of a short run's first minutes; with the cache, a second run of
the same config (another seed, a resumed run, a re-run after a fix elsewhere) loads the compiled
programs from disk instead. The cache changes no result, only time.

Where it lives, first match wins:

* ``$JAX_COMPILATION_CACHE_DIR``: JAX's own setting (``experiments/compare.py`` sets it);
* ``$GRADPROM_COMPILATION_CACHE``: a directory, or ``off`` (also ``0``, ``false``, ``none`` or
  empty) to compile afresh every time;
* ``~/.cache/gradprom_jax/jax`` (``$XDG_CACHE_HOME/gradprom_jax/jax`` when that is set).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import jax

CACHE_ENV = "GRADPROM_COMPILATION_CACHE"
JAX_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
OFF_VALUES = ("", "0", "off", "false", "none")


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
  """The cache directory the environment asks for, or None when the cache is off.

  >>> compilation_cache_dir({"GRADPROM_COMPILATION_CACHE": "/tmp/jax_cache"})
  PosixPath('/tmp/jax_cache')
  >>> print(compilation_cache_dir({"GRADPROM_COMPILATION_CACHE": "off"}))
  None
  >>> compilation_cache_dir({"XDG_CACHE_HOME": "/cache"})
  PosixPath('/cache/gradprom_jax/jax')
  """
  if environ.get(JAX_CACHE_ENV):
    return Path(environ[JAX_CACHE_ENV]).expanduser()
  if CACHE_ENV in environ:
    value = environ[CACHE_ENV].strip()
    return None if value.lower() in OFF_VALUES else Path(value).expanduser()
  cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(cache_home) / "gradprom_jax" / "jax"


def enable_compilation_cache(environ: Mapping[str, str] = os.environ) -> Path | None:
  """Points JAX's persistent cache at :func:`compilation_cache_dir`; call before compiling.

  Returns the directory, or None when the cache is off (JAX's setting is then left alone).
  """
  directory = compilation_cache_dir(environ)
  if directory is not None:
    # JAX's default threshold (cache compiles over 1 s) keeps the train and eval steps and skips
    # the small programs, which are cheaper to recompile than to look up.
    jax.config.update("jax_compilation_cache_dir", str(directory))
  return directory
