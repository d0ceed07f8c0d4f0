"""Example ids: every batch carries the id its degradation noise is keyed by, so the degraded images
are the same for any number of hosts and devices and any order of the devices in the mesh."""
import itertools

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gradprom_jax.data import EXAMPLE_ID, default_data_config, load_dataset
from gradprom_jax.data import make_eval_loader, make_train_loader
from gradprom_jax.configuration.run_spec import system_from_config
from gradprom_jax.training.example_ids import example_ids

from test_train_step import IMAGE, tiny_config  # noqa: E402

GLOBAL_BATCH = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  config = default_data_config()
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.image_size, config.num_train, config.num_validation, config.num_test = IMAGE[:2], 8, 6, 2
  return load_dataset(config)


def _host_batches(dataset, process_count, *, steps=3, eval_split=None):
  """Each simulated host's first `steps` batches of the train (or `eval_split`) loader."""
  def loader(p):
    if eval_split:
      return make_eval_loader(dataset, eval_split, global_batch_size=GLOBAL_BATCH,
                              process_index=p, process_count=process_count)
    return make_train_loader(dataset, global_batch_size=GLOBAL_BATCH, seed=0, patch_size=(8, 8),
                             process_index=p, process_count=process_count)
  return [list(itertools.islice(iter(loader(p)), steps)) for p in range(process_count)]


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_batches_carry_the_same_ids_for_any_number_of_hosts(dataset, process_count):
  hosts = _host_batches(dataset, process_count)
  for step in range(3):
    ids = np.concatenate([host[step][EXAMPLE_ID] for host in hosts])
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, np.arange(GLOBAL_BATCH))   # the position in its global batch
  hosts = _host_batches(dataset, process_count, steps=2, eval_split="validation")
  for step in range(2):   # 6 examples: the second batch is half padding, numbered on
    ids = np.concatenate([host[step][EXAMPLE_ID] for host in hosts])
    np.testing.assert_array_equal(ids, step * GLOBAL_BATCH + np.arange(GLOBAL_BATCH))


def _global_batch(host_batches, devices, mesh_devices):
  """The global batch a mesh over `mesh_devices` holds when host p (owning `devices[p]`) places its
  slice on its own devices, as ``jax.make_array_from_process_local_data`` does: rows follow the
  mesh's device order, so a host's rows need not be where its slice sits in the data stream."""
  sharding = NamedSharding(Mesh(np.array(mesh_devices), ("data",),
                                axis_types=(jax.sharding.AxisType.Auto,)), P("data"))
  per_device = GLOBAL_BATCH // len(mesh_devices)
  chunks = {}
  for host, batch in zip(devices, host_batches):
    owned = [d for d in mesh_devices if d in host]   # this host's devices in mesh order
    for i, device in enumerate(owned):
      chunks[device] = {k: v[i * per_device:(i + 1) * per_device] for k, v in batch.items()}

  def assemble(key):
    shards = [jax.device_put(chunks[d][key], d) for d in mesh_devices]
    shape = (GLOBAL_BATCH, *shards[0].shape[1:])
    return jax.make_array_from_single_device_arrays(shape, sharding, shards)
  return {key: assemble(key) for key in host_batches[0]}


# (devices, hosts, mesh order): hosts own contiguous runs of `devices`; the mesh lists them in order.
LAYOUTS = [(1, 1, [0]), (2, 1, [0, 1]), (2, 2, [1, 0]), (4, 1, [3, 1, 2, 0]), (4, 2, [0, 1, 2, 3]),
           (4, 2, [2, 3, 0, 1]), (4, 2, [0, 2, 1, 3]), (4, 4, [3, 0, 2, 1])]


def test_degraded_images_do_not_depend_on_hosts_devices_or_device_order(dataset):
  system = system_from_config(tiny_config(), channels=IMAGE[-1], num_classes=2)
  key = jax.random.key(7)
  # What the train step does: degrade each example with the id its batch carries.
  degrade = jax.jit(lambda batch: system.degrade(key, batch["image"] / 255.0, example_ids(batch)))
  by_layout = []
  for num_devices, num_hosts, order in LAYOUTS:
    all_devices = jax.devices()[:num_devices]
    owned = np.array_split(np.array(all_devices), num_hosts)
    hosts = _host_batches(dataset, num_hosts, steps=1)
    batch = _global_batch([h[0] for h in hosts], [list(o) for o in owned],
                          [all_devices[i] for i in order])
    degraded = np.asarray(degrade(batch))
    images = np.asarray(batch["image"])
    by_layout.append({images[row].tobytes(): degraded[row] for row in range(GLOBAL_BATCH)})
  reference = by_layout[0]
  for layout, degraded in zip(LAYOUTS, by_layout):
    assert degraded.keys() == reference.keys(), layout
    for image, expected in reference.items():
      np.testing.assert_array_equal(degraded[image], expected, err_msg=str(layout))
