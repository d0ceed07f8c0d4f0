"""Data parallelism: the pmap state's layouts convert on the devices, and the state starts sharded."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradprom_jax.training.parallel import DataParallel
from gradprom_jax.training.train_state import initial_state
from gradprom_jax.training.train_step import make_train_step
from test_train_step import IMAGE, make_batch, setup, tiny_config


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(3, 4)).astype(np.float32), "step": np.int32(7),
          "nested": {"b": rng.normal(size=(5,)).astype(np.float32)}}


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pmap_state_converts_on_the_devices_without_host_copies():
  parallel = DataParallel("pmap")
  state = jax.device_put(_tree(), parallel.replicated)
  double = parallel.compile_step(lambda s, b: (jax.tree.map(lambda x: 2 * x, s), b))
  batch = parallel.put_state({"x": np.zeros(2, np.float32)})   # on the devices already
  # "disallow_explicit" refuses any host-to-device copy, implicit or explicit: numpy arrays passed
  # to a pmap'd function, `device_put` or `make_array_from_process_local_data` of host data.
  with jax.transfer_guard("disallow_explicit"):
    replicas = parallel.put_state(state)
    replicas, _ = double(replicas, batch)
    view = parallel.global_state(replicas)
  assert all(x.shape[0] == jax.device_count() for x in jax.tree.leaves(replicas))
  assert all(x.sharding == parallel.replicated for x in jax.tree.leaves(view))
  _assert_trees_equal(view, jax.tree.map(lambda x: 2 * x, _tree()))


def test_pmap_global_view_survives_the_next_step_donating_the_state():
  # Checkpoints are written asynchronously from the view while the next steps run.
  parallel = DataParallel("pmap")
  double = parallel.compile_step(lambda s, b: (jax.tree.map(lambda x: 2 * x, s), b))
  batch = parallel.put_batch({"x": np.zeros((jax.device_count(), 2), np.float32)})
  replicas = parallel.put_state(_tree())
  view = parallel.global_state(replicas)
  replicas, _ = double(replicas, batch)   # donates the buffers `view` was made from
  replicas, _ = double(replicas, batch)
  _assert_trees_equal(view, _tree())
  _assert_trees_equal(parallel.global_state(replicas), jax.tree.map(lambda x: 4 * x, _tree()))


@pytest.mark.slow   # 50 s; tests/test_train_step.py's mesh/pmap equality stays in the default suite
@pytest.mark.parametrize("recognition", ["segmentation", "classification"])
def test_pmap_and_mesh_train_to_the_same_state(recognition):
  config = tiny_config("gradprom", recognition)
  system, phases, enhancer_tx, recognizer_tx, state = setup(
      config, 2 if recognition == "segmentation" else 3)
  results = {}
  for mode in ("mesh", "pmap"):
    parallel = DataParallel(mode)
    step = parallel.compile_step(make_train_step(
        system, phases[-1], enhancer_tx=enhancer_tx, recognizer_tx=recognizer_tx,
        task_weight=dict.fromkeys(system.task_names, 1.0), axis_name=parallel.axis_name))
    placed = parallel.put_state(jax.tree.map(jnp.copy, state))   # steps donate their input
    for i in range(2):
      placed, _ = step(placed, parallel.put_batch(make_batch(i, recognition=recognition)))
    results[mode] = parallel.global_state(placed)
  assert int(results["pmap"].step) == 2
  for a, b in zip(jax.tree.leaves(results["mesh"]), jax.tree.leaves(results["pmap"])):
    assert a.sharding == b.sharding
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("recognition", ["segmentation", "classification"])
def test_initial_state_created_sharded_equals_the_one_placed_afterwards(recognition):
  config = tiny_config("gradprom", recognition)
  system, _, enhancer_tx, recognizer_tx, _ = setup(config, 2)
  replicated = DataParallel().replicated
  args = (3, system, IMAGE, enhancer_tx, recognizer_tx)
  placed = jax.device_put(initial_state(*args), replicated)
  with jax.transfer_guard("disallow_explicit"):   # made on the devices, not copied there
    created = initial_state(*args, sharding=replicated)
  assert all(x.sharding == replicated for x in jax.tree.leaves(created))
  for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(created)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # bitwise
