"""Data parallelism with `jax.sharding`: a 1-D mesh over the local devices (axis "data").

Batches (episodes, target indices) are sharded along their leading axis; parameters,
optimiser state, keys and the device-resident dataset are replicated.
"""

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh (axis "data") over `devices` (default: all local devices)."""
  devices = jax.local_devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  """(replicated, batch-sharded) NamedShardings of `mesh`."""
  return NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  """A batch is split evenly over the devices: its size must be a multiple of their count."""
  num_devices = mesh.devices.size
  if batch_size % num_devices:
    raise ValueError(f"{what} = {batch_size} is not a multiple of the {num_devices} devices "
                     "the batch is sharded over; choose a multiple.")
