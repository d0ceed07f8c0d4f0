"""Data parallelism over every device of every host, as a wrapper around a pure train step.

Two interchangeable modes (``config.parallel``):

* ``"mesh"`` (default): ``jax.jit`` over a 1-D ``Mesh`` named ``"data"``; the state is replicated
  (``NamedSharding(mesh, P())``), the batch is split along its first axis (``P("data")``). Gradients
  of the global-batch loss come out global, with no explicit collective.
* ``"pmap"``: ``jax.pmap`` over local devices with axis ``"batch"``; the step averages gradients with
  ``lax.pmean`` before the combiner. The state carries a leading device axis.

Either way each host passes only its own slice of the global batch. Evaluation is a plain
``jax.jit`` program in both modes: it takes :meth:`DataParallel.global_state` and
:meth:`DataParallel.put_global_batch`.
"""
from __future__ import annotations

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
    """A host or mesh-replicated state, placed for :meth:`compile_step`'s function."""
    if self.mode == "pmap":
      devices = jax.local_device_count()
      return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (devices, *np.shape(x))), state)
    return jax.device_put(state, self.replicated)

  def global_state(self, state: Any) -> Any:
    """The state as mesh-replicated global arrays (for checkpoints and evaluation)."""
    if self.mode == "mesh":
      return state
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x[0])), state)

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
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return {k: float(v) for k, v in jax.device_get(metrics).items()}
