"""Device mesh and shardings of the scoring engine.

One code path for 1 CPU, 8 GPUs or a pod slice: a 1-D ``jax.sharding.Mesh`` over the devices of
this process with the batch on the ``"data"`` axis, parameters replicated, and ``jax.jit`` with
``NamedSharding`` placing every batch (no ``pmap``). Batches are padded to a multiple of the
device count by the batcher.

In a multi-process run each process builds its mesh from its *local* devices and scores its own
rows (see :mod:`glmjax.engine.distributed`): scoring needs no cross-host communication, so a
process never waits for another one's ragged workload.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"``.

    Args:
      devices: explicit devices, a number ``n`` (the first ``n`` local devices), or None (all
        local devices of this process).
    """
    local = jax.local_devices()
    if devices is None:
        devs = local
    elif isinstance(devices, int):
        if not 1 <= devices <= len(local):
            from glmjax.errors import ConfigError

            raise ConfigError(f"asked for {devices} devices but this process has {len(local)} "
                              f"({local[0].platform})")
        devs = local[:devices]
    else:
        devs = list(devices)
    return Mesh(np.asarray(devs), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put a pytree (model state) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def put_batch(arrays: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Transfer host arrays whose leading axis is the batch to the mesh, split over ``"data"``.

    The transfer is asynchronous: it overlaps with computation already queued on the devices.
    """
    sh = batch_sharding(mesh)
    # one call for all arrays: the transfers are dispatched together (less host time per batch)
    return dict(jax.device_put(dict(arrays), sh))


def num_devices(mesh: Mesh) -> int:
    """Number of devices of the mesh."""
    return int(mesh.devices.size)
