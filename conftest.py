"""Test-session setup shared by every test and doctest.

Four simulated CPU devices let the data-parallel tests run on any laptop; the flag must be set before
JAX initialises its backends, which is why it lives in the root conftest (imported first by pytest).
"""
import os

# Optimisation level 0 of XLA's CPU backend compiles the tests' many tiny programs ~35% faster; the
# tests check results, not speed. Subprocesses (end-to-end runs) inherit both flags.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must never download anything: TFDS would otherwise try to reach GCS for metadata.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")
# Nor write into the user's compilation cache (experiments/main.py's default, ~/.cache/gradprom_jax):
# tests of the cache pass their own tmp directory.
os.environ["GRADPROM_COMPILATION_CACHE"] = "off"
