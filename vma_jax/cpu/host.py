"""Settings of a CPU host that must be made before JAX (or the process) starts.

Two things make XLA:CPU use a host well, both measured in docs/performance.md:

- One JAX device per core (`use_cpu_cores`). XLA:CPU runs most of one computation on about
  one core (the large-K bound used 1.05 of 2 cores); with the batch sharded over one device per
  core (`vma_jax.sharding`), every core is busy. Only the CPU platform is split: on a GPU or
  TPU host the accelerator stays the default backend.
- glibc's allocator kept from returning memory to the kernel (`MALLOC_TUNABLES`). A training
  step allocates and frees gigabytes of temporaries; by default glibc gives them back and the
  next step takes them again page by page (20 million page faults and a quarter of the CPU
  time in the kernel at the recipe's size). The entry points re-execute themselves once with
  these tunables (`reexec_with_malloc_tunables`) unless GLIBC_TUNABLES is already set.
"""

from collections.abc import Sequence
import math
import os
import platform
import sys

from absl import logging
import jax

# One arena, no mmap'd chunks and a trim threshold of 100 GB: freed memory stays with the
# process for the next step. Transparent huge pages (glibc >= 2.35; older ones ignore it):
# one fault per 2 MB instead of per 4 kB when the heap grows.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=100000000000")


def reexec_with_malloc_tunables() -> None:
  """Re-executes this process with GLIBC_TUNABLES = MALLOC_TUNABLES, on Linux with glibc.

  Does nothing if GLIBC_TUNABLES is already set (set it, even to "", to choose otherwise) or
  on another platform. Call first thing in a script's `__main__` block: the process image is
  replaced (same PID, arguments, interpreter options and environment otherwise).
  """
  if "GLIBC_TUNABLES" in os.environ or platform.system() != "Linux":
    return
  if platform.libc_ver()[0] != "glibc":
    return
  env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
  argv = getattr(sys, "orig_argv", [sys.executable] + sys.argv)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, env)


def cpu_cores() -> int:
  """The cores this process may run on."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def default_cpu_devices(batch_sizes: Sequence[int], cores: int | None = None) -> int:
  """The largest device count <= `cores` (default: this process's) dividing every batch size."""
  cores = cpu_cores() if cores is None else cores
  common = math.gcd(*batch_sizes)  # 0 for no batch sizes: every count divides it
  return max(n for n in range(1, max(cores, 1) + 1) if common % n == 0)


def use_cpu_cores(batch_sizes: Sequence[int], num_devices: int | None = None) -> int:
  """Makes JAX's CPU platform `num_devices` devices; call before any JAX computation.

  By default, the largest count <= the number of cores that divides every batch size in
  `batch_sizes`, so that each batch shards evenly. If JAX has already started, the count can
  no longer change: a warning says so and the current count stays.

  Returns:
    The number of CPU devices requested.
  """
  if num_devices is None:
    num_devices = default_cpu_devices(batch_sizes)
  if num_devices < 1:
    raise ValueError(f"the number of CPU devices must be positive, got {num_devices}")
  try:
    jax.config.update("jax_num_cpu_devices", num_devices)
  except RuntimeError:
    logging.warning("JAX has already started; keeping its %d CPU device(s) instead of %d",
                    jax.local_device_count("cpu"), num_devices)
  return num_devices
