"""Data parallelism over every device of every host, as a wrapper around a pure train step.

Two interchangeable modes (``config.parallel``):

* ``"mesh"`` (default): ``jax.jit`` over a 1-D ``Mesh`` named ``"data"``; the state is replicated
  (``NamedSharding(mesh, P())``), the batch is split along its first axis (``P("data")``). Gradients
  of the global-batch loss come out global, with no explicit collective.
* ``"pmap"``: ``jax.pmap`` over local devices with axis ``"batch"``; the step averages gradients with
  ``lax.pmean`` before the combiner. The state carries a leading device axis.

Either way each host passes only its own slice of the global batch. Evaluation is a plain
``jax.jit`` program in both modes: it takes :meth:`DataParallel.global_state` and
:meth:`DataParallel.put_global_batch`. Under ``pmap`` the state moves between its two layouts on the
devices (each device keeps its own replica), never through the host.
"""
from __future__ import annotations

import functools

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

PMAP_AXIS = "batch"


class DataParallel:
  """Places states and batches on devices and compiles steps for one parallel mode.

  >>> parallel = DataParallel("mesh")
  >>> parallel.num_devices == jax.device_count()
  True
  """

  def __init__(self, mode: str = "mesh"):
    if mode not in ("mesh", "pmap"):
      raise ValueError(f"Unknown parallel mode {mode!r}; expected 'mesh' or 'pmap'.")
    self.mode = mode
    # jax.make_mesh orders the devices for the hardware's topology; results do not depend on that
    # order, since each example's degradation is keyed by the id its batch carries.
    self.mesh = jax.make_mesh((jax.device_count(),), ("data",),
                              axis_types=(jax.sharding.AxisType.Auto,))
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))

  @functools.cached_property
  def _to_replicas(self) -> Callable:
    # Each device holds a full replica in both layouts, so converting is a local reshape on every
    # device: no collective, no host copy. Built on first use: making a DataParallel compiles
    # nothing (a config error must surface before anything is jitted).
    return jax.jit(jax.shard_map(lambda tree: jax.tree.map(lambda x: x[None], tree),
                                 mesh=self.mesh, in_specs=P(), out_specs=P("data")))

  @functools.cached_property
  def _from_replicas(self) -> Callable:
    # `check_vma=False`: the replicas are equal by construction, which shard_map cannot see.
    return jax.jit(jax.shard_map(lambda tree: jax.tree.map(lambda x: x[0], tree), mesh=self.mesh,
                                 in_specs=P("data"), out_specs=P(), check_vma=False))

  @property
  def num_devices(self) -> int:
    return jax.device_count()

  @property
  def axis_name(self) -> str | None:
    """The axis a step must average over (``pmap``), or None (``mesh``)."""
    return PMAP_AXIS if self.mode == "pmap" else None

  def check_batch_size(self, global_batch_size: int) -> None:
    if global_batch_size % self.num_devices:
      raise ValueError(f"batch_size {global_batch_size} is not divisible by the number of devices "
                       f"({self.num_devices}).")

  def compile_step(self, step: Callable) -> Callable:
    """``step(state, batch) -> (state, metrics)`` compiled for this mode, donating the old state."""
    if self.mode == "pmap":
      return jax.pmap(step, axis_name=PMAP_AXIS, donate_argnums=0)
    return jax.jit(step, in_shardings=(self.replicated, self.data_sharding),
                   out_shardings=(self.replicated, self.replicated), donate_argnums=0)

  def put_state(self, state: Any) -> Any:
    """A host or mesh-replicated state, placed for :meth:`compile_step`'s function.

    Under ``pmap``: one replica per device along a leading device axis, made on the devices from
    the mesh-replicated state (a mesh-replicated state is not copied through the host).

    >>> parallel = DataParallel("pmap")
    >>> parallel.put_state({"w": np.ones(3)})["w"].shape == (jax.device_count(), 3)
    True
    """
    state = jax.device_put(state, self.replicated)   # a no-op for an already replicated state
    return self._to_replicas(state) if self.mode == "pmap" else state

  def global_state(self, state: Any) -> Any:
    """The state as mesh-replicated global arrays (for checkpoints and evaluation).

    Under ``pmap``: each device's own replica, without the device axis, assembled on the devices.
    The arrays are new buffers, so a later step donating ``state`` leaves them intact.

    >>> parallel = DataParallel("pmap")
    >>> state = parallel.put_state({"w": np.arange(3.0)})
    >>> parallel.global_state(state)["w"].sharding == parallel.replicated
    True
    """
    return self._from_replicas(state) if self.mode == "pmap" else state

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """This host's slice of the global batch, placed for :meth:`compile_step`'s function."""
    if self.mode == "pmap":
      devices = jax.local_device_count()
      return {k: np.reshape(v, (devices, -1, *v.shape[1:])) for k, v in local_batch.items()}
    return self.put_global_batch(local_batch)

  def put_global_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """This host's slice as global arrays split over the mesh, whatever the mode.

    For plain ``jax.jit`` programs (evaluation, sample grids) that take :meth:`global_state`: they
    need no per-device axis, so one compiled program serves both modes.

    >>> parallel = DataParallel("pmap")
    >>> batch = parallel.put_global_batch({"image": np.zeros((jax.device_count(), 8, 8, 3))})
    >>> batch["image"].shape == (jax.device_count(), 8, 8, 3)
    True
    """
    return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
            for k, v in local_batch.items()}

  def metrics_to_host(self, metrics: dict[str, Any]) -> dict[str, float]:
    """Step metrics (identical on every device) as Python floats."""
    if self.mode == "pmap":   # the first device's copy, as it is: slicing would be a device op
      metrics = jax.tree.map(lambda x: x.addressable_shards[0].data, metrics)
    return {k: float(np.asarray(v).reshape(())) for k, v in jax.device_get(metrics).items()}
