"""Tests for gradprom_jax.training.checkpointing: round trips, iterator position, corruption, bad workdirs."""

import shutil
import warnings

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gradprom_jax.training.checkpointing import (CheckpointRestoreError, Checkpointer, WorkdirError,
                                                 ensure_writable_directory)

# A failed orbax read leaves a tensorstore callback for an already-closed asyncio loop, reported
# whenever it is garbage-collected (often during a later test); harmless.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _train_state(seed: int):
  """A small stand-in for the real train state: params, optax chain state, step, both key kinds."""
  params = {"conv": {"kernel": jax.random.normal(jax.random.key(seed), (3, 3, 2, 4))},
            "bias": jnp.full((4,), float(seed)),
            # Big enough that orbax stores it as a raw chunk (small leaves sit compressed inside
            # checksummed b-tree nodes, where any damage is caught by tensorstore itself).
            "dense": jnp.arange(4096.0).reshape(64, 64) * seed}
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  opt_state = optimizer.init(params)
  # A step of updates so mu/nu/count are not all zeros or ones.
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = optimizer.update(grads, opt_state, params)
  return {"params": params, "opt_state": opt_state, "step": jnp.int32(seed),
          "key": jax.random.key(seed), "raw_key": jax.random.PRNGKey(seed)}


def _iterator(seed: int = 0):
  return iter(grain.MapDataset.range(100).shuffle(seed=seed).batch(4).to_iter_dataset())


def _bitwise_equal(a, b) -> bool:
  def raw(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    return np.asarray(x)

  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  return tree_a == tree_b and all(
      raw(x).dtype == raw(y).dtype and raw(x).shape == raw(y).shape
      and raw(x).tobytes() == raw(y).tobytes() for x, y in zip(leaves_a, leaves_b))


def test_round_trip_restores_bitwise_equal_state_and_iterator_position(tmp_path):
  state = _train_state(7)
  iterator = _iterator()
  for _ in range(3):
    next(iterator)
  with Checkpointer(tmp_path, save_interval_steps=5) as ckpt:
    assert ckpt.save(5, state, iterator)
    expected_next = [next(iterator).tolist() for _ in range(2)]

  with Checkpointer(tmp_path, save_interval_steps=5) as ckpt:
    fresh = _iterator()
    restored, step = ckpt.restore_latest(_train_state(0), fresh)
  assert step == 5
  assert _bitwise_equal(restored, state)
  assert isinstance(restored["opt_state"][1][0], optax.ScaleByAdamState)  # NamedTuples survive.
  assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
  assert restored["step"].dtype == jnp.int32
  # The restored keys draw the same numbers as the originals.
  assert jnp.array_equal(jax.random.uniform(restored["key"], (3,)),
                         jax.random.uniform(state["key"], (3,)))
  assert [next(fresh).tolist() for _ in range(2)] == expected_next


def test_restore_accepts_abstract_target_with_sharding(tmp_path):
  state = _train_state(3)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)
  with Checkpointer(tmp_path, save_interval_steps=1, async_save=False) as ckpt:
    ckpt.save(1, state)
    restored, _ = ckpt.restore_latest(abstract)
  assert _bitwise_equal(restored, state)
  assert restored["params"]["bias"].sharding == sharding


def test_save_interval_force_and_max_to_keep(tmp_path):
  state = _train_state(1)
  with Checkpointer(tmp_path, save_interval_steps=10, max_to_keep=2) as ckpt:
    saved = [step for step in range(0, 35) if ckpt.save(step, state)]
    assert saved == [0, 10, 20, 30]
    assert ckpt.save(33, state, force=True)
    assert not ckpt.save(33, state, force=True)  # Already there: not written twice.
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [30, 33]
    assert ckpt.latest_step() == 33


def test_empty_directory_restores_none(tmp_path):
  with Checkpointer(tmp_path / "new", save_interval_steps=1) as ckpt:
    assert ckpt.restore_latest(_train_state(0)) is None


def _corrupt_by_truncation(step_dir):
  for manifest in step_dir.glob("state/**/manifest.ocdbt"):
    manifest.write_bytes(b"")


def _corrupt_by_flipping_bytes(step_dir):
  # Orbax reads a damaged raw chunk back without complaint; only the fingerprints notice.
  chunk = max(step_dir.glob("state/**/d/*"), key=lambda f: f.stat().st_size)
  data = bytearray(chunk.read_bytes())
  data[len(data) // 2] ^= 0xFF
  chunk.write_bytes(bytes(data))


def _corrupt_by_deleting_state(step_dir):
  shutil.rmtree(step_dir / "state")


@pytest.mark.parametrize("corrupt, reason", [
    (_corrupt_by_truncation, "DATA_LOSS"),
    (_corrupt_by_flipping_bytes, "fingerprint mismatch"),
    (_corrupt_by_deleting_state, "step 2"),
])
def test_corrupt_latest_falls_back_with_warning(tmp_path, corrupt, reason):
  old_state, new_state = _train_state(1), _train_state(2)
  with Checkpointer(tmp_path, save_interval_steps=1, async_save=False) as ckpt:
    ckpt.save(1, old_state)
    ckpt.save(2, new_state)
  corrupt(tmp_path / "2")

  with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
    with pytest.warns(RuntimeWarning, match="step 2") as record:
      restored, step = ckpt.restore_latest(_train_state(0))
    assert step == 1
    assert any(reason in str(w.message) for w in record)
    assert _bitwise_equal(restored, old_state)
    # The bad one is set aside, so the resumed run can save step 2 again.
    assert (tmp_path / "2.corrupt").is_dir()
    assert ckpt.save(2, new_state)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [1, 2]


def test_all_checkpoints_corrupt_raises_instead_of_starting_over(tmp_path):
  with Checkpointer(tmp_path, save_interval_steps=1, async_save=False) as ckpt:
    ckpt.save(1, _train_state(1))
  _corrupt_by_truncation(tmp_path / "1")
  with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      with pytest.raises(CheckpointRestoreError, match="none could be restored"):
        ckpt.restore_latest(_train_state(0))


def test_unwritable_directory_names_the_path(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  workdir = blocker / "checkpoints"
  with pytest.raises(WorkdirError, match=str(workdir)):
    Checkpointer(workdir, save_interval_steps=1)
  with pytest.raises(WorkdirError, match="not writable"):
    ensure_writable_directory(workdir)


def test_rejects_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="save_interval_steps"):
    Checkpointer(tmp_path, save_interval_steps=0)
