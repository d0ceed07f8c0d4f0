"""Test-session setup shared by every test and doctest.

Four simulated CPU devices let the data-parallel tests run on any laptop; the flag must be set before
JAX initialises its backends, which is why it lives in the root conftest (imported first by pytest).
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must never download anything: TFDS would otherwise try to reach GCS for metadata.
os.environ.setdefault("TFDS_DISABLE_GCS", "1")
os.environ.setdefault("NO_GCE_CHECK", "true")
