"""Tests for gradprom_jax.training.compilation_cache: where the cache lives (shared on multi-host)
and its size cap."""

import os

import pytest

from gradprom_jax.training import compilation_cache


@pytest.fixture
def jax_settings(monkeypatch):
  """Records jax.config.update calls instead of changing this process's JAX."""
  updates = {}
  monkeypatch.setattr(compilation_cache.jax.config, "update",
                      lambda name, value: updates.__setitem__(name, value))
  return updates


def _hosts(monkeypatch, count: int, index: int = 0) -> None:
  monkeypatch.setattr(compilation_cache.jax, "process_count", lambda: count)
  monkeypatch.setattr(compilation_cache.jax, "process_index", lambda: index)


def test_multi_host_without_a_shared_directory_runs_uncached_with_one_warning(
    monkeypatch, jax_settings, caplog, tmp_path):
  _hosts(monkeypatch, 2)
  with caplog.at_level("WARNING"):
    assert compilation_cache.enable_compilation_cache({"XDG_CACHE_HOME": str(tmp_path)}) is None
  assert jax_settings == {}
  assert [r.getMessage() for r in caplog.records] == [
      "Compilation cache off: a multi-host run needs GRADPROM_COMPILATION_CACHE=DIR on a "
      "filesystem every host shares (JAX writes it from process 0 only)."]


def test_multi_host_uses_the_directory_it_is_given(monkeypatch, jax_settings, tmp_path):
  _hosts(monkeypatch, 2)
  shared = tmp_path / "shared_cache"
  assert compilation_cache.enable_compilation_cache(
      {"GRADPROM_COMPILATION_CACHE": str(shared)}) == shared
  assert jax_settings == {"jax_compilation_cache_dir": str(shared)}
  assert compilation_cache.enable_compilation_cache({"GRADPROM_COMPILATION_CACHE": "off"}) is None


def test_single_process_keeps_the_home_default(monkeypatch, jax_settings, tmp_path):
  _hosts(monkeypatch, 1)
  directory = compilation_cache.enable_compilation_cache({"XDG_CACHE_HOME": str(tmp_path)})
  assert directory == tmp_path / "gradprom_jax" / "jax"
  assert jax_settings == {"jax_compilation_cache_dir": str(directory)}


def _entries(directory, sizes):
  directory.mkdir(parents=True, exist_ok=True)
  for age, (name, size) in enumerate(sizes):
    (directory / name).write_bytes(b"x" * size)
    os.utime(directory / name, (1000 + age, 1000 + age))   # later in the list = newer


def test_oversized_cache_loses_its_oldest_entries_at_start(monkeypatch, jax_settings, tmp_path):
  _hosts(monkeypatch, 1)
  _entries(tmp_path, [("a", 400), ("b", 400), ("c", 400)])
  environ = {"GRADPROM_COMPILATION_CACHE": str(tmp_path),
             "GRADPROM_COMPILATION_CACHE_MAX_GB": str(900 / 1e9)}
  compilation_cache.enable_compilation_cache(environ)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]
  compilation_cache.enable_compilation_cache({**environ, "GRADPROM_COMPILATION_CACHE_MAX_GB": "0"})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]   # 0: no cap


def test_only_process_0_prunes_a_shared_cache(monkeypatch, jax_settings, tmp_path):
  _hosts(monkeypatch, 2, index=1)
  _entries(tmp_path, [("a", 400), ("b", 400)])
  compilation_cache.enable_compilation_cache(
      {"GRADPROM_COMPILATION_CACHE": str(tmp_path),
       "GRADPROM_COMPILATION_CACHE_MAX_GB": str(100 / 1e9)})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
