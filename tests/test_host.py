"""CPU host settings: one JAX device per core, and the allocator's tunables (vma_jax.host)."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from vma_jax import host

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _python(code, **env_changes):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  for name, value in env_changes.items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def test_default_cpu_devices_divide_every_batch_size():
  assert host.default_cpu_devices([256, 256], cores=2) == 2
  assert host.default_cpu_devices([32, 64], cores=12) == 8
  assert host.default_cpu_devices([16], cores=3) == 2
  assert host.default_cpu_devices([24, 36], cores=16) == 12
  assert host.default_cpu_devices([7], cores=4) == 1
  assert host.default_cpu_devices([], cores=4) == 4


def test_use_cpu_cores_splits_the_cpu_before_jax_starts():
  result = _python("\n".join([
      "import jax",
      "from vma_jax import host",
      "assert host.use_cpu_cores([6], 3) == 3",
      "print('devices', jax.device_count())",
      "host.use_cpu_cores([6], 2)  # too late: JAX has started",
      "print('still', jax.device_count())",
  ]))
  assert "devices 3" in result.stdout and "still 3" in result.stdout
  assert "already started" in result.stderr


_REEXEC = "\n".join([
    "import os",
    "from vma_jax import host",
    "print('GLIBC_TUNABLES=' + os.environ.get('GLIBC_TUNABLES', '<unset>'), flush=True)",
    "host.reexec_with_malloc_tunables()",
    "print('ran')",
])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tunables are glibc's")
def test_reexec_sets_the_malloc_tunables_once():
  lines = _python(_REEXEC, GLIBC_TUNABLES=None).stdout.split()
  assert lines == ["GLIBC_TUNABLES=<unset>", f"GLIBC_TUNABLES={host.MALLOC_TUNABLES}", "ran"]


def test_reexec_keeps_the_users_tunables():
  lines = _python(_REEXEC, GLIBC_TUNABLES="glibc.malloc.hugetlb=1").stdout.split()
  assert lines == ["GLIBC_TUNABLES=glibc.malloc.hugetlb=1", "ran"]
