"""Optimiser extras: a moving average of the enhancer's parameters (``optim.ema_decay``) that every
evaluation uses, the best-on-validation checkpoint (``checkpoint_best_metric``, ``test_on_best``)
and AdamW's weight decay restricted to kernels (``optim.weight_decay_mask``)."""
import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import default
from gradprom_jax.configuration.config import base_config
from gradprom_jax.configuration.config_validation import ConfigError, validate_config
from gradprom_jax.training import train
from gradprom_jax.training.checkpointing import CheckpointRestoreError, Checkpointer
from gradprom_jax.training.optimizers import learning_rate_schedule, per_task_optimizer
from gradprom_jax.training.params_ema import ParamsEmaState, find_params_ema
from gradprom_jax.training.train_state import create_train_state
from gradprom_jax.training.training_spec import (enhancer_tx_from_config, phases_from_config,
                                                 recognizer_tx_from_config)

# Parameters shaped like a Flax model's: conv and dense kernels, biases, GroupNorm scale and bias.
TOY_PARAMS = {
    "Conv_0": {"kernel": jnp.full((3, 3, 1, 4), 0.5), "bias": jnp.full((4,), 0.5)},
    "GroupNorm_0": {"scale": jnp.ones((4,)), "bias": jnp.full((4,), 0.5)},
    "Dense_0": {"kernel": jnp.full((4, 2), 0.5), "bias": jnp.full((2,), 0.5)},
}


def _config(**optim):
  config = base_config()
  config.method = "enhance_only"   # no combiner: the enhancer's chain is clipping, AdamW (, EMA)
  config.optim.warmup_steps = 0
  config.optim.update(optim)
  return config


def _quadratic_grads(params):
  return jax.grad(lambda p: sum(jnp.sum((x - 2.0) ** 2) for x in jax.tree.leaves(p)))(params)


# ---- The parameter average.

def test_parameter_average_equals_its_closed_form():
  decay, steps = 0.8, 7
  tx = enhancer_tx_from_config(_config(ema_decay=decay), phases_from_config(_config()))
  params, state = TOY_PARAMS, tx.init(TOY_PARAMS)
  trajectory = [params]
  for _ in range(steps):
    updates, state = tx.update(_quadratic_grads(params), state, params)
    params = optax.apply_updates(params, updates)
    trajectory.append(params)
  # ema_n = d^n θ_0 + (1 − d) Σ_{k=1..n} d^(n−k) θ_k
  expected = jax.tree.map(
      lambda *thetas: decay ** steps * thetas[0] + (1 - decay) * sum(
          decay ** (steps - k) * thetas[k] for k in range(1, steps + 1)), *trajectory)
  ema = find_params_ema(state)
  for got, want, final in zip(jax.tree.leaves(ema), jax.tree.leaves(expected),
                              jax.tree.leaves(params)):
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(got, final)   # an average, not the parameters themselves


def test_parameter_average_does_not_change_the_updates():
  phases = phases_from_config(_config())
  with_ema = enhancer_tx_from_config(_config(ema_decay=0.9), phases)
  without = enhancer_tx_from_config(_config(), phases)
  grads = _quadratic_grads(TOY_PARAMS)
  a, _ = with_ema.update(grads, with_ema.init(TOY_PARAMS), TOY_PARAMS)
  b, _ = without.update(grads, without.init(TOY_PARAMS), TOY_PARAMS)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert find_params_ema(without.init(TOY_PARAMS)) is None


def _toy_state(config):
  phases = phases_from_config(config)
  return create_train_state(seed=0, enhancer_params=TOY_PARAMS,
                            recognizer_params={"segmentation": TOY_PARAMS},
                            enhancer_tx=enhancer_tx_from_config(config, phases),
                            recognizer_tx=recognizer_tx_from_config(config, phases))


def test_evaluation_state_holds_the_average_in_place_of_the_parameters():
  state = _toy_state(_config(ema_decay=0.99))
  zeros = jax.tree.map(jnp.zeros_like, TOY_PARAMS)
  state = state.replace(enhancer_opt_state=jax.tree.map(
      lambda s: ParamsEmaState(zeros) if isinstance(s, ParamsEmaState) else s,
      state.enhancer_opt_state, is_leaf=lambda s: isinstance(s, ParamsEmaState)))
  evaluated = state.for_evaluation()
  assert all(np.all(x == 0) for x in jax.tree.leaves(evaluated.enhancer_params))
  assert evaluated.recognizer_params is state.recognizer_params
  plain = _toy_state(_config())
  assert plain.for_evaluation() is plain


def test_a_checkpoint_without_the_average_restores_as_is_and_refuses_to_resume_with_it_on(tmp_path):
  """Unmasked AdamW without a parameter average, as a plain optax chain saves it."""
  config = _config(weight_decay_mask="all")
  phases = phases_from_config(config)
  lr = learning_rate_schedule(config.optim.enhancer_lr, 0, 500)
  old_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(
      learning_rate=lr, weight_decay=config.optim.weight_decay))
  old_state = create_train_state(seed=0, enhancer_params=TOY_PARAMS,
                                 recognizer_params={"segmentation": TOY_PARAMS},
                                 enhancer_tx=old_tx, recognizer_tx=per_task_optimizer(
                                     {"segmentation": old_tx}))
  with Checkpointer(tmp_path, save_interval_steps=1, async_save=False) as checkpointer:
    checkpointer.save(1, old_state)
    restored, _ = checkpointer.restore_latest(_toy_state(config))
  assert jax.tree.structure(restored) == jax.tree.structure(_toy_state(config))
  assert jax.tree.structure(restored.enhancer_opt_state) == jax.tree.structure(
      enhancer_tx_from_config(config, phases).init(TOY_PARAMS))
  # The average is not in the old checkpoint: a run that turns it on cannot resume from it.
  with pytest.raises(Exception, match="could be restored"), pytest.warns(RuntimeWarning):
    with Checkpointer(tmp_path, save_interval_steps=1, async_save=False) as checkpointer:
      checkpointer.restore_latest(_toy_state(_config(weight_decay_mask="all", ema_decay=0.9)))


# ---- Weight decay on kernels only.

@pytest.mark.parametrize("mask", ["kernels", "all"])
def test_weight_decay_spares_biases_and_norm_scales(mask):
  config = _config(weight_decay_mask=mask, weight_decay=0.5, clip_norm=None)
  tx = recognizer_tx_from_config(config, phases_from_config(config))
  params = {"segmentation": TOY_PARAMS}
  state, zero = tx.init(params), jax.tree.map(jnp.zeros_like, params)
  for _ in range(3):
    updates, state = tx.update(zero, state, params)
    params = optax.apply_updates(params, updates)
  for path, after in jax.tree_util.tree_leaves_with_path(params["segmentation"]):
    before = TOY_PARAMS[path[0].key][path[1].key]
    decayed = mask == "all" or path[-1].key == "kernel"
    if decayed:
      assert np.all(np.abs(after) < np.abs(before)), jax.tree_util.keystr(path)
    else:
      np.testing.assert_array_equal(after, before, err_msg=jax.tree_util.keystr(path))


# ---- The best checkpoint.

def test_checkpointer_keeps_the_newest_and_the_best_scoring_step(tmp_path):
  scores = {1: 3.0, 2: 5.0, 3: float("nan"), 4: 4.0}
  for metric, best in (("psnr", 2), ("-psnr", 1)):
    directory = tmp_path / metric
    with Checkpointer(directory, save_interval_steps=1, max_to_keep=1, async_save=False,
                      best_metric=metric) as checkpointer:
      for step, score in scores.items():
        checkpointer.save(step, {"w": jnp.full(2, float(step))}, metrics={"psnr": score})
      assert checkpointer.all_steps() == sorted({best, 4})
      restored, step = checkpointer.restore_best({"w": jnp.zeros(2)})
    assert step == best and restored["w"].tolist() == [best, best]
    # A restart goes on comparing with the checkpoint already there.
    with Checkpointer(directory, save_interval_steps=1, max_to_keep=1, async_save=False,
                      best_metric=metric) as checkpointer:
      checkpointer.save(5, {"w": jnp.zeros(2)}, metrics={"psnr": 4.5})
      assert checkpointer.best_step() == (2 if metric == "psnr" else 1)


@pytest.mark.parametrize("change, message", [
    ({"test_on_best": True}, "needs checkpoint_best_metric"),
    ({"checkpoint_best_metric": "-"}, "names no metric"),
    ({"optim.ema_decay": 1.0}, r"must be in \[0, 1\)"),
    ({"optim.weight_decay_mask": "norms"}, "is not one of kernels, all"),
])
def test_bad_values_are_refused_in_one_line(change, message):
  config = base_config()
  for key, value in change.items():
    *groups, name = key.split(".")
    node = config
    for group in groups:
      node = node[group]
    node[name] = value
  with pytest.raises(ConfigError, match=message):
    validate_config(config)


def test_best_metric_must_be_a_validation_key():
  with pytest.raises(ConfigError, match="choose one of: dice, psnr"):
    train._check_best_metric("-auc", {"psnr": 20.0, "dice": 0.5})
  train._check_best_metric("-psnr", {"psnr": 20.0})


# ---- Whole runs.

def _saved_state(workdir: Path, step: int):
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(workdir / "checkpoints" / str(step) / "state")


def _results(workdir: Path) -> dict:
  return json.loads((workdir / train.RESULTS_FILENAME).read_text())


def _validation_psnr(workdir: Path) -> dict[int, float]:
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["psnr"] for r in records if r.get("kind") == "val"}


def _smoke_config(data_dir: Path, **changes):
  config = default.get_config("smoke")
  config.data.data_dir = str(data_dir)
  config.eval_every = config.checkpoint_every = 2
  config.keep_checkpoints = 10
  config.checkpoint_best_metric = "psnr"
  config.update(changes)
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two finished 6-step smoke runs, the same but for the parameter average (decay 0.5)."""
  root = tmp_path_factory.mktemp("runs")
  with_ema = _smoke_config(root / "tfds")
  with_ema.optim.ema_decay = 0.5
  train.train_and_evaluate(with_ema, str(root / "ema"))
  train.train_and_evaluate(_smoke_config(root / "tfds"), str(root / "plain"))
  return root, with_ema


@pytest.mark.slow   # two smoke runs (~70 s on 2 shared cores), shared with the tests below
def test_evaluation_scores_the_average_while_training_is_unchanged(runs):
  root, _ = runs
  ema_state, plain_state = _saved_state(root / "ema", 6), _saved_state(root / "plain", 6)
  for x, y in zip(jax.tree.leaves(ema_state["enhancer_params"]),
                  jax.tree.leaves(plain_state["enhancer_params"])):
    np.testing.assert_array_equal(x, y)   # the average never feeds back into training
  assert _results(root / "ema")["psnr"] != _results(root / "plain")["psnr"]
  assert _validation_psnr(root / "ema") != _validation_psnr(root / "plain")
  assert _results(root / "ema")["evaluated_step"] == 6


@pytest.mark.slow
def test_resumed_run_keeps_the_average_exactly(runs):
  root, config = runs
  resumed = root / "ema_resumed"
  shutil.copytree(root / "ema", resumed)
  for later in ("4", "6"):
    shutil.rmtree(resumed / "checkpoints" / later)
  (resumed / train.RESULTS_FILENAME).unlink()
  train.train_and_evaluate(config, str(resumed))
  a, b = _saved_state(resumed, 6), _saved_state(root / "ema", 6)
  assert [p for p, _ in jax.tree.leaves_with_path(a)] == [p for p, _ in jax.tree.leaves_with_path(b)]
  assert any("ema" in jax.tree_util.keystr(p) for p, _ in jax.tree.leaves_with_path(a))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()
  assert _results(resumed) == _results(root / "ema")


@pytest.mark.slow
def test_test_on_best_scores_the_best_validation_checkpoint(runs):
  root, _ = runs
  workdir = root / "plain_on_best"
  shutil.copytree(root / "plain", workdir)
  validation = _validation_psnr(workdir)
  best = max(validation, key=validation.get)
  with Checkpointer(workdir / "checkpoints", save_interval_steps=2, best_metric="psnr") as saved:
    assert saved.best_step() == best
  assert not (workdir / "checkpoints_best").exists()
  config = _smoke_config(root / "tfds", test_on_best=True, overwrite=True)
  results = train.train_and_evaluate(config, str(workdir), reevaluate=True)
  assert results["evaluated_step"] == best == _results(workdir)["evaluated_step"]
  last = _results(root / "plain")
  assert (results["psnr"] == last["psnr"]) == (best == 6)
  assert not math.isnan(results["psnr"])


@pytest.mark.slow   # one smoke run (~50 s on 2 shared cores)
def test_each_step_is_written_once_and_the_best_outlives_the_newest_kept(tmp_path, monkeypatch):
  written = []
  save = ocp.CheckpointManager.save

  def counted_save(self, step, *args, **kwargs):
    written.append(step)
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", counted_save)
  workdir = tmp_path / "run"
  # The smoke run's validation PSNR falls over its 6 steps: the best is older than the newest.
  config = _smoke_config(tmp_path / "tfds", keep_checkpoints=1)
  train.train_and_evaluate(config, str(workdir))
  assert written == [2, 4, 6]   # evaluation and checkpoint fall on the same steps
  validation = _validation_psnr(workdir)
  best = max(validation, key=validation.get)
  assert best < 6
  kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert kept == [best, 6]
  assert not (workdir / "checkpoints_best").exists()


def test_a_workdir_with_a_separate_best_directory_is_refused_in_one_line(tmp_path):
  (tmp_path / "run" / "checkpoints_best" / "4").mkdir(parents=True)
  with pytest.raises(CheckpointRestoreError, match="checkpoints_best is of an earlier layout") as e:
    train.train_and_evaluate(_smoke_config(tmp_path / "tfds"), str(tmp_path / "run"))
  assert "\n" not in str(e.value)
  assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints_best"]
