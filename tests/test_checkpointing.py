"""Tests for gradprom_jax.training.checkpointing: round trips, iterator position, corruption, bad
workdirs, the newest and the best in one directory, another host count, hosts that agree."""

import os
import shutil
import subprocess
import sys
import warnings

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import portpicker
import pytest

from gradprom_jax.training.checkpointing import (CheckpointRestoreError, Checkpointer, HostCountError,
                                                 WorkdirError, _fingerprint_dict,
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


def test_fingerprints_reach_the_host_in_one_transfer(monkeypatch):
  def fetched_alone(*_):
    raise AssertionError("a device scalar fetched to the host by itself")
  for name in ("__int__", "__index__", "item"):   # a device round trip per leaf
    monkeypatch.setattr(type(jnp.zeros(1)), name, fetched_alone)
  prints = _fingerprint_dict(_train_state(1))
  assert len(prints) == len(jax.tree.leaves(_train_state(1))) and len(set(prints.values())) > 1


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


# ---- The newest and the best, in one directory.

def test_one_directory_keeps_the_newest_and_the_best_written_once(tmp_path):
  def w(step):
    return {"w": jnp.full(2, float(step))}

  with Checkpointer(tmp_path, save_interval_steps=2, max_to_keep=2, async_save=False,
                    best_metric="psnr") as ckpt:
    assert ckpt.save(2, w(2), metrics={"psnr": 5.0})
    assert not ckpt.save(3, w(3), metrics={"psnr": 1.0})   # off the interval, not the best
    for step, score in ((4, 3.0), (6, 4.0), (8, 2.0)):
      assert ckpt.save(step, w(step), metrics={"psnr": score})
    # The newest two, and the best although it is older than them.
    assert ckpt.all_steps() == [2, 6, 8] and ckpt.best_step() == 2
    assert ckpt.save(9, w(9), metrics={"psnr": 7.0})       # off the interval, but a new best
    assert ckpt.all_steps() == [8, 9] and ckpt.best_step() == 9
    assert not ckpt.save(9, w(9), metrics={"psnr": 7.0})   # a step is written once
  assert sorted(p.name for p in tmp_path.iterdir()) == ["8", "9"]
  with Checkpointer(tmp_path, save_interval_steps=2, max_to_keep=2, best_metric="psnr") as ckpt:
    assert not ckpt.save(11, w(11), metrics={"psnr": 6.0})   # the kept best still counts
    restored, step = ckpt.restore_best({"w": jnp.zeros(2)})
    assert step == 9 and restored["w"].tolist() == [9.0, 9.0]
    assert ckpt.restore_latest({"w": jnp.zeros(2)})[1] == 9


# ---- Another host count.

def _saved_by_two_hosts(tmp_path, positions):
  """A checkpoint at step 1 whose data position reads as written by two hosts."""
  iterator = _iterator()
  for _ in range(3):
    next(iterator)
  with Checkpointer(tmp_path, save_interval_steps=1, async_save=False) as ckpt:
    ckpt.save(1, _train_state(1), iterator)
  data = tmp_path / "1" / "data"
  saved = (data / "process_0-of-1.json").read_text()
  (data / "process_0-of-1.json").unlink()
  for host, position in enumerate(positions):
    (data / f"process_{host}-of-2.json").write_text(saved.replace("3", str(position)))
  return [next(iterator).tolist() for _ in range(2)]


def test_data_position_saved_on_two_hosts_resumes_on_one(tmp_path):
  expected_next = _saved_by_two_hosts(tmp_path, positions=(3, 3))
  fresh = _iterator()
  with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
    restored, step = ckpt.restore_latest(_train_state(0), fresh)
  assert step == 1 and _bitwise_equal(restored, _train_state(1))
  assert [next(fresh).tolist() for _ in range(2)] == expected_next


def test_data_positions_that_differ_between_hosts_are_refused_in_one_line(tmp_path):
  _saved_by_two_hosts(tmp_path, positions=(3, 4))
  with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
    with pytest.raises(HostCountError, match="saved by 2 host.*cannot resume on 1") as error:
      ckpt.restore_latest(_train_state(0), _iterator())
  assert "\n" not in str(error.value)
  assert (tmp_path / "1").is_dir()   # not taken for damage: nothing is set aside


def test_a_missing_host_data_position_is_damage_not_a_host_count(tmp_path):
  _saved_by_two_hosts(tmp_path, positions=(3,))
  with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
    with pytest.warns(RuntimeWarning, match="data positions of 1 of 2 hosts"):
      with pytest.raises(CheckpointRestoreError, match="none could be restored") as error:
        ckpt.restore_latest(_train_state(0), _iterator())
  assert not isinstance(error.value, HostCountError)


# ---- Several hosts agree.

_AGREEING_HOST = """
import sys
import jax
import jax.numpy as jnp
import numpy as np
import grain
import orbax.checkpoint as ocp
from gradprom_jax.training.checkpointing import Checkpointer
from gradprom_jax.training.distributed import initialize_distributed

address, process_id, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
initialize_distributed({"mode": "explicit", "coordinator_address": address, "num_processes": 2,
                        "process_id": process_id, "initialization_timeout": 30})
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
def state(step):
  return {"w": jax.device_put(np.full(8, step, np.float32), replicated)}
iterator = iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())
with Checkpointer(directory, save_interval_steps=1, async_save=False) as ckpt:
  for step in (1, 2):
    next(iterator)
    ckpt.save(step, state(step), iterator)

if process_id == 1:   # a transient read error of the newest step, on this host only
  read = ocp.StandardCheckpointHandler.restore
  def flaky(self, directory, *args, **kwargs):
    if directory.parent.name == "2":
      raise OSError("transient read error")
    return read(self, directory, *args, **kwargs)
  ocp.StandardCheckpointHandler.restore = flaky

iterator = iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())
with Checkpointer(directory, save_interval_steps=1) as ckpt:
  restored, step = ckpt.restore_latest(state(0), iterator)
# One write of the whole line (Gloo's log lines from another thread must not land inside it).
sys.stdout.write(" ".join(map(str, ["RESULT", step, float(restored["w"][0]),
                                    next(iterator).tolist()])) + "\\n")
sys.stdout.flush()
jax.distributed.shutdown()
"""


@pytest.mark.slow   # two processes that import jax and orbax: ~20-30 s on 2 shared cores
def test_hosts_agree_on_the_newest_step_every_host_restored(tmp_path):
  port = portpicker.pick_unused_port()
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_PLATFORMS": "cpu"}
  hosts = [subprocess.Popen([sys.executable, "-c", _AGREEING_HOST, f"localhost:{port}", str(i),
                             str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    outputs = [host.communicate(timeout=300) for host in hosts]
  finally:
    for host in hosts:
      host.kill()   # a hang fails the test instead of blocking it
  for i, (host, (out, err)) in enumerate(zip(hosts, outputs)):
    assert host.returncode == 0, f"host {i} failed:\n{err[-3000:]}"
    result = next(line for line in out.splitlines() if line.startswith("RESULT"))
    assert result.split(maxsplit=1)[1] == "1 1.0 [2, 3]"   # step 1 on both, data position too
  assert (tmp_path / "2.corrupt").is_dir() and not (tmp_path / "2").exists()
  # The two hosts' checkpoint resumes on one host (four devices), data position included.
  fresh = iter(grain.MapDataset.range(100).batch(2).to_iter_dataset())
  with Checkpointer(tmp_path, save_interval_steps=1) as ckpt:
    restored, step = ckpt.restore_latest({"w": jnp.zeros(8)}, fresh)
  assert step == 1 and restored["w"].tolist() == [1.0] * 8
  assert next(fresh).tolist() == [2, 3]
