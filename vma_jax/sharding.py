"""Data parallelism with `jax.sharding`: a 1-D mesh over all devices (axis "data").

Batches (episodes, target indices) are sharded along their leading axis; parameters,
optimiser state, keys and the device-resident dataset are replicated. With several processes
(`vma_jax.distributed`) the mesh spans every process's devices and each process places and
computes only its own devices' shards: host arrays go onto the mesh with `replicate` and
`shard_batch`, not `jax.device_put`.
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

from vma_jax import errors

AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh (axis "data") over `devices` (default: every process's, `jax.devices()`)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  """(replicated, batch-sharded) NamedShardings of `mesh`."""
  return NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """A batch is split evenly over the devices: its size must be a multiple of their count."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise errors.ConfigError(f"{what} = {batch_size} is not a multiple of the {num_devices} "
                             "devices the batch is sharded over; choose a multiple.")


def replicate(tree, mesh: Mesh):
  """Host arrays, the same in every process, as arrays replicated over `mesh`.

  Each process copies them onto its own devices only (`jax.device_put` would first compare
  them across processes, gathering every process's copy).
  """
  replicated, _ = shardings(mesh)

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated, lambda index: x[index])

  return jax.tree.map(place, tree)


def shard_batch(x_B, mesh: Mesh) -> jax.Array:
  """A host array, the same in every process, sharded along its leading axis over `mesh`:
  each process places only its own devices' rows."""
  _, batch = shardings(mesh)
  x_B = np.asarray(x_B)
  return jax.make_array_from_callback(x_B.shape, batch, lambda index: x_B[index])
