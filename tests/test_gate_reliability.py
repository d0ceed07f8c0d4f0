"""The gate reliability probe: cos(g_e, g_t) on two halves of a batch, and its logging in a run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.configuration.config import base_config
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.training.gate_reliability import make_gate_probe
from gradprom_jax.training.train_step import make_train_step

from test_train_step import IMAGE, setup  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEYS = ("cosine_half_a", "cosine_half_b", "cosine_full", "halves_agree")


def toy_system(degradation):
  config = base_config()
  config.num_train_steps = 10
  config.task.degradation = degradation
  config.model.enhancer = {"name": "edsr", "features": 4, "num_blocks": 1}
  config.model.recognizer = {"name": "unet_segmenter", "features": 4, "num_levels": 2}
  return setup(config)   # the train-step tests' system, phases, optimisers and state


def make_batch(seed, batch_size):
  rng = np.random.default_rng(seed)
  image = rng.uniform(size=(batch_size, *IMAGE)).astype(np.float32)
  return {"image": jnp.asarray(image), "mask": jnp.asarray((image[..., 0] > 0.5).astype(np.int32))}


def test_halves_that_are_copies_agree_and_match_the_whole_batch():
  # No noise: copied examples are degraded identically, so both halves give the same gradients.
  system, *_, state = toy_system("downsample(scale=2)")
  half = make_batch(0, 3)
  batch = jax.tree.map(lambda x: jnp.concatenate([x, x]), half)
  values = make_gate_probe(system)(state, batch, 0)
  assert sorted(values) == sorted(f"gate_probe/{k}" for k in KEYS)
  assert all(-1.0 <= v <= 1.0 for v in values.values())
  assert values["gate_probe/halves_agree"] == 1.0
  assert values["gate_probe/cosine_half_a"] != 0.0
  np.testing.assert_allclose(values["gate_probe/cosine_half_a"], values["gate_probe/cosine_half_b"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(values["gate_probe/cosine_full"], values["gate_probe/cosine_half_a"],
                             rtol=1e-4, atol=1e-5)


def test_whole_batch_cosine_is_the_train_steps_cosine_and_agreement_follows_the_signs():
  """Same maths, same degradation noise: the probe's full-batch cosine is what the gate saw."""
  system, phases, enhancer_tx, recognizer_tx, state = toy_system(
      "downsample(scale=2) > gaussian_noise(sigma=0.05)")
  step = jax.jit(make_train_step(system, phases[-1], enhancer_tx=enhancer_tx,
                                 recognizer_tx=recognizer_tx, task_weight=dict.fromkeys(system.task_names, 1.0)))
  probe = make_gate_probe(system)
  for seed in range(4):
    batch = make_batch(seed, 6)
    before = state
    state, metrics = step(state, batch)
    values = probe(before, batch, int(before.step))
    np.testing.assert_allclose(values["gate_probe/cosine_full"], float(metrics["cosine"]),
                               rtol=1e-4, atol=1e-5)
    a, b = values["gate_probe/cosine_half_a"], values["gate_probe/cosine_half_b"]
    assert values["gate_probe/halves_agree"] == float(np.sign(a) == np.sign(b))
  with pytest.raises(ValueError, match="at least 2 examples"):
    probe(state, make_batch(0, 1), 0)


def test_gate_reliability_every_is_validated():
  config = base_config()
  config.gate_reliability_every = -1
  with pytest.raises(ConfigError, match="gate_reliability_every=-1 must be a non-negative integer"):
    validate_config(config)


@pytest.mark.slow
def test_smoke_run_logs_the_probe_and_the_cosine_average_under_pmap(tmp_path):
  """Two devices under pmap: the probe gets the mesh-global state and batch."""
  workdir = tmp_path / "run"
  command = [sys.executable, str(REPO / "experiments" / "main.py"),
             "--config=configs/default.py:smoke", f"--workdir={workdir}",
             f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.parallel=pmap",
             "--config.gate_reliability_every=2", "--config.gradprom.cosine_ema=0.9"]
  environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
                 "--xla_backend_optimization_level=0"}
  completed = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                             timeout=600)
  assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["kind"] == "train"]
  probes = [r for r in train if "gate_probe/cosine_full" in r]
  assert [r["step"] for r in probes] == [2, 4, 6]
  for record in probes:
    assert {f"gate_probe/{k}" for k in KEYS} <= set(record)
    assert all(-1.0 <= record[f"gate_probe/{k}"] <= 1.0 for k in KEYS)
  assert all("cosine_ema" in r for r in train if "cosine" in r)
  assert any("cosine" in r for r in train)
