"""Runs on several hosts: `initialize` joins the processes of one run into one JAX program.

Every process runs the same command. Together they see every process's devices
(`jax.devices()`, the mesh of `vma_jax.sharding`); each feeds and computes its own devices'
shards of a batch, and process 0 alone writes the workdir's files (`is_chief`). Where the
processes are found, first that applies:

  1. arguments (train.py and evaluate.py: --coordinator_address, --num_processes,
     --process_id);
  2. the environment: VMA_COORDINATOR_ADDRESS (or JAX's own JAX_COORDINATOR_ADDRESS),
     VMA_NUM_PROCESSES, VMA_PROCESS_ID;
  3. the cluster, as `jax.distributed.initialize()` detects it: an srun step of several
     tasks (SLURM), an mpirun of several processes (Open MPI), a Cloud TPU slice of several
     hosts.

A single process (none of these, or a cluster of one) starts nothing: it is the usual
one-host run.
"""

from __future__ import annotations

import os

from absl import logging
import jax

ADDRESS_ENV = "VMA_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "VMA_NUM_PROCESSES"
PROCESS_ID_ENV = "VMA_PROCESS_ID"


def _from_env(value: int | None, name: str) -> int | None:
  if value is not None or not os.environ.get(name):
    return value
  try:
    return int(os.environ[name])
  except ValueError:
    raise ValueError(f"${name} = {os.environ[name]!r} is not an integer; set it to one, or "
                     "unset it.") from None


def cluster_process_count() -> int:
  """The processes of the cluster `jax.distributed.initialize()` would detect here; 1 outside
  one. Cheap: environment variables, and on a Cloud TPU VM its metadata server."""
  # JAX's own detectors (private API), in JAX's order; Kubernetes is left out, as detecting it
  # queries the cluster's API server (pass the flags there).
  from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  from jax._src import clusters  # pylint: disable=g-import-not-at-top

  detectors = [clusters.OmpiCluster, clusters.SlurmCluster]
  if cloud_tpu_init.running_in_cloud_tpu_vm:  # set by `import jax` on a TPU VM
    detectors += [clusters.GkeTpuCluster, clusters.GceTpuCluster]
  for cluster in detectors:
    if cluster.is_env_present():
      return cluster.get_process_count()
  return 1


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` where this is one of several processes; returns
  whether it did. Call before JAX starts its backends (any computation, `jax.devices()`).

  Args:
    coordinator_address: host:port of process 0, which serves the others there (default:
      $VMA_COORDINATOR_ADDRESS, $JAX_COORDINATOR_ADDRESS, or the cluster's).
    num_processes: the processes of the run (default: $VMA_NUM_PROCESSES, or the cluster's).
    process_id: this process's index, 0 .. num_processes - 1 (default: $VMA_PROCESS_ID, or
      the cluster's).
  """
  coordinator_address = coordinator_address or os.environ.get(ADDRESS_ENV) or None
  address_given = coordinator_address is not None
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = _from_env(num_processes, NUM_PROCESSES_ENV)
  process_id = _from_env(process_id, PROCESS_ID_ENV)
  cluster_size = None
  if None in (coordinator_address, num_processes, process_id):
    cluster_size = cluster_process_count()  # JAX fills in what is not given from the cluster
  if num_processes is None:
    num_processes = cluster_size
    if num_processes == 1 and (address_given or process_id is not None):
      raise ValueError("--coordinator_address and --process_id go with --num_processes=N (the "
                       "run's processes, on every one); pass it too.")
  if num_processes == 1:
    return False
  if num_processes < 1:
    raise ValueError(f"num_processes = {num_processes}; pass a positive number.")
  if cluster_size is not None and cluster_size <= 1 and (
      coordinator_address is None or process_id is None):
    raise ValueError(
        f"a run of {num_processes} processes needs, in every process, the coordinator's "
        "address and its own index: pass --coordinator_address=HOST:PORT (process 0's host, "
        f"a port free there) and --process_id=0..{num_processes - 1}.")
  if jax.config.jax_cpu_collectives_implementation is None:
    # XLA:CPU's collectives across processes (JAX's default, unless switched off).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  # Not jax.process_index(): that would start the backends, before the CPU split of the caller.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top

  state = distributed.global_state
  logging.info("JAX process %d of %d (coordinator %s)", state.process_id, state.num_processes,
               state.coordinator_address)
  return True


def define_flags() -> None:
  """Defines --coordinator_address, --num_processes and --process_id for an entry point."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  detected = "detected on Cloud TPU and under srun"
  flags.DEFINE_string(
      "coordinator_address", None, "Several processes: host:port where process 0 serves the "
      f"others (default: ${ADDRESS_ENV}; {detected}).")
  flags.DEFINE_integer(
      "num_processes", None, f"Several processes: how many (default: ${NUM_PROCESSES_ENV}; "
      f"{detected}; else 1). See docs/training.md.")
  flags.DEFINE_integer(
      "process_id", None, "Several processes: this one's index, 0..num_processes-1 (default: "
      f"${PROCESS_ID_ENV}; {detected}).")


def initialize_from_flags() -> bool:
  """`initialize` with the flags of `define_flags`."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  values = flags.FLAGS
  return initialize(values.coordinator_address, values.num_processes, values.process_id)


def is_chief() -> bool:
  """Whether this process writes the workdir's files: process 0 (also the only process)."""
  return jax.process_index() == 0
