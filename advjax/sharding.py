"""Devices, meshes and the data-parallel axis, shared by training, evaluation and defenses.

Every data-parallel computation in advjax runs under ``jax.shard_map`` over a 1-D mesh whose
single axis, ``AXIS = "batch"``, spans every device of every process: parameters are replicated,
batches are split over the axis. The same code runs on one CPU, fake CPU devices, a GPU box or a
multi-host TPU slice (multi-host start: ``advjax.train.distributed``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "batch"


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process), axis ``batch``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a host pytree on every device of ``mesh`` (replicated)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's part of a global batch, laid out ``[local_devices, per_device, ...]``
    as ``advjax.data`` yields it, into global arrays split over the mesh's batch axis."""
    sharding = NamedSharding(mesh, P(AXIS))

    def to_global(a):
        a = np.asarray(a)
        return jax.make_array_from_process_local_data(sharding, a.reshape((-1,) + a.shape[2:]))

    return {k: to_global(v) for k, v in batch.items()}


def example_keys(key: jax.Array, per_device: int) -> jax.Array:
    """One key per example of this device's shard, indexed by the example's global position
    (call inside ``shard_map`` over ``AXIS``)."""
    index = jax.lax.axis_index(AXIS) * per_device + jnp.arange(per_device)
    return jax.vmap(jax.random.fold_in, (None, 0))(key, index)


def global_count(local_count: jax.Array, axis_name: str | None = AXIS) -> tuple[jax.Array, int]:
    """(count summed over the mapped ``axis_name``, number of devices on it); the local count and
    1 outside a mapped context (e.g. when a defense is called directly)."""
    if axis_name is None:
        return local_count, 1
    try:
        return jax.lax.psum(local_count, axis_name), jax.lax.psum(1, axis_name)
    except NameError:  # unbound axis: not inside shard_map/pmap
        return local_count, 1


def masked_mean(values: jax.Array, mask: jax.Array, axis_name: str | None = AXIS) -> jax.Array:
    """Mean of ``values`` over the examples where ``mask`` is set, across the data-parallel batch.

    Inside a step mapped over ``axis_name`` this returns ``local_sum * devices / global_count``,
    whose ``pmean`` over devices is the global masked mean (0 when no example is selected).
    """
    mask = mask.astype(values.dtype)
    count, devices = global_count(jnp.sum(mask), axis_name)
    return jnp.sum(mask * values) * devices / jnp.maximum(count, 1.0)
