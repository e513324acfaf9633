"""Settings of a CPU-only host that must be made before JAX (or the process) starts.

Two things make XLA:CPU use a host well, both measured in docs/performance.md:

- One JAX device per core (`use_cpu_cores`). XLA:CPU runs most of one computation on about
  one core (the large-K bound used 1.05 of 2 cores); with the batch sharded over one device per
  core (`vma_jax.sharding`), every core is busy.
- glibc's allocator kept from returning memory to the kernel (`MALLOC_TUNABLES`). A training
  step allocates and frees gigabytes of temporaries; by default glibc gives them back and the
  next step takes them again page by page (20 million page faults and a quarter of the CPU
  time in the kernel at the recipe's size). The entry points re-execute themselves once with
  these tunables (`reexec_with_malloc_tunables`) unless GLIBC_TUNABLES is already set.

Both apply only where JAX will compute on the CPU alone (`cpu_only`, decided before JAX
starts): on a GPU or TPU host the devices and the allocator stay as they are.
"""

from collections.abc import Sequence
import importlib.metadata
import importlib.util
import math
import os
import pkgutil
import platform
import sys

from absl import logging
import jax

# One arena, no mmap'd chunks and a trim threshold of 100 GB: freed memory stays with the
# process for the next step. Transparent huge pages (glibc >= 2.35; older ones ignore it):
# one fault per 2 MB instead of per 4 kB when the heap grows.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=100000000000")

# Top-level modules of JAX's accelerator plugins: CUDA and ROCm kernels and the TPU runtime
# (jax_plugins.* holds the PJRT plugins themselves, found in `accelerator_plugins`).
_PLUGIN_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                   "jax_rocm7_plugin", "libtpu", "libtpu_nightly")


def accelerator_plugins() -> list[str]:
  """The JAX accelerator plugins installed, found without importing them or starting JAX.

  As jax._src.xla_bridge discovers them: the modules of the `jax_plugins` namespace package
  (jax_plugins.xla_cuda12, ...) and the entry points of the `jax_plugins` group, the plugins
  named in PJRT_NAMES_AND_LIBRARY_PATHS, the TPU runtime (libtpu, or TPU_LIBRARY_PATH); and
  the CUDA and ROCm kernel packages (`_PLUGIN_MODULES`).
  """
  found = [name for name in _PLUGIN_MODULES if importlib.util.find_spec(name) is not None]
  namespace = importlib.util.find_spec("jax_plugins")
  if namespace is not None and namespace.submodule_search_locations:
    found += [f"jax_plugins.{module.name}"
              for module in pkgutil.iter_modules(namespace.submodule_search_locations)]
  found += [entry.value for entry in importlib.metadata.entry_points(group="jax_plugins")]
  if os.environ.get("PJRT_NAMES_AND_LIBRARY_PATHS"):
    found.append("PJRT_NAMES_AND_LIBRARY_PATHS")
  if os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")):
    found.append("TPU_LIBRARY_PATH")
  return sorted(set(found))


def requested_platforms() -> list[str]:
  """The platforms JAX_PLATFORMS (or the `jax_platforms` option) asks for; [] for any."""
  return [name.strip() for name in (jax.config.jax_platforms or "").split(",") if name.strip()]


def cpu_only() -> bool:
  """Whether JAX will compute on the CPU alone; decided without starting JAX's backends.

  If JAX_PLATFORMS (or `jax.config.jax_platforms`) names platforms, whether it names only
  cpu: "cpu" is CPU-only even with an accelerator plugin installed; "cuda", "tpu" or
  "cuda,cpu" is not. Otherwise, whether no accelerator plugin is installed
  (`accelerator_plugins`): JAX would start the accelerator of one as the default backend. (A
  plugin installed without its accelerator makes JAX fall back to one CPU device; set
  JAX_PLATFORMS=cpu there for the CPU settings.)
  """
  platforms = requested_platforms()
  if platforms:
    return all(name == "cpu" for name in platforms)
  return not accelerator_plugins()


def reexec_with_malloc_tunables() -> None:
  """Re-executes this process with GLIBC_TUNABLES = MALLOC_TUNABLES on a CPU-only Linux host
  with glibc (`cpu_only`).

  Does nothing if GLIBC_TUNABLES is already set (set it, even to "", to choose otherwise), on
  another platform, or on a host with an accelerator. Call first thing in a script's
  `__main__` block: the process image is replaced (same PID, arguments, interpreter options
  and environment otherwise).
  """
  if "GLIBC_TUNABLES" in os.environ or platform.system() != "Linux":
    return
  if platform.libc_ver()[0] != "glibc" or not cpu_only():
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


def use_cpu_cores(batch_sizes: Sequence[int], num_devices: int | None = None) -> int | None:
  """On a CPU-only host (`cpu_only`), makes JAX's CPU platform `num_devices` devices; call
  before any JAX computation.

  By default, the largest count <= the number of cores that divides every batch size in
  `batch_sizes`, so that each batch shards evenly. If JAX has already started, the count can
  no longer change: a warning says so and the current count stays. On a host with an
  accelerator nothing changes (one INFO line says so).

  Returns:
    The number of CPU devices requested; None on a host that is not CPU-only.
  """
  if num_devices is not None and num_devices < 1:
    raise ValueError(f"the number of CPU devices must be positive, got {num_devices}")
  if not cpu_only():
    logging.info("Not a CPU-only host (JAX_PLATFORMS=%s, accelerator plugins: %s): keeping "
                 "JAX's devices as they are", ",".join(requested_platforms()) or "<any>",
                 ", ".join(accelerator_plugins()) or "none")
    return None
  if num_devices is None:
    num_devices = default_cpu_devices(batch_sizes)
  try:
    jax.config.update("jax_num_cpu_devices", num_devices)
  except RuntimeError:
    logging.warning("JAX has already started; keeping its %d CPU device(s) instead of %d",
                    jax.local_device_count("cpu"), num_devices)
  return num_devices
