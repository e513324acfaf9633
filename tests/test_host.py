"""CPU-only host settings: one JAX device per core, the allocator's tunables, and when
they apply (vma_jax.cpu.host)."""

import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import os
import pathlib
import platform
import subprocess
import sys

import jax
import pytest

from vma_jax.cpu import host

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
      "from vma_jax.cpu import host",
      "assert host.use_cpu_cores([6], 3) == 3",
      "print('devices', jax.device_count())",
      "host.use_cpu_cores([6], 2)  # too late: JAX has started",
      "print('still', jax.device_count())",
  ]))
  assert "devices 3" in result.stdout and "still 3" in result.stdout
  assert "already started" in result.stderr


_REEXEC = "\n".join([
    "import os",
    "from vma_jax.cpu import host",
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


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tunables are glibc's")
@pytest.mark.parametrize("platforms", ["cuda", "tpu", "cuda,cpu"])
def test_reexec_leaves_a_process_asking_for_an_accelerator_alone(platforms):
  # The child only imports JAX: with no such accelerator here, starting it would fail.
  lines = _python(_REEXEC, GLIBC_TUNABLES=None, JAX_PLATFORMS=platforms).stdout.split()
  assert lines == ["GLIBC_TUNABLES=<unset>", "ran"]


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the tunables are glibc's")
def test_reexec_without_jax_platforms_follows_the_installed_plugins():
  lines = _python(_REEXEC, GLIBC_TUNABLES=None, JAX_PLATFORMS=None).stdout.split()
  if host.accelerator_plugins():
    assert lines == ["GLIBC_TUNABLES=<unset>", "ran"]
  else:
    assert lines == ["GLIBC_TUNABLES=<unset>", f"GLIBC_TUNABLES={host.MALLOC_TUNABLES}", "ran"]


@pytest.fixture
def plugins(monkeypatch):
  """No accelerator plugin installed; `plugins(name)` installs a fake top-level one."""
  installed = set()
  real_find_spec = importlib.util.find_spec

  def find_spec(name, *args, **kwargs):
    if name in installed:
      return importlib.util.spec_from_loader(name, loader=None)
    if name in host._PLUGIN_MODULES or name == "jax_plugins":  # pylint: disable=protected-access
      return None
    return real_find_spec(name, *args, **kwargs)

  monkeypatch.setattr(importlib.util, "find_spec", find_spec)
  monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kwargs: [])
  monkeypatch.delenv("PJRT_NAMES_AND_LIBRARY_PATHS", raising=False)
  monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
  return installed.add


@pytest.fixture
def jax_platforms():
  """Sets `jax.config.jax_platforms` (as JAX_PLATFORMS does at import) for one test."""
  old = jax.config.jax_platforms
  yield lambda value: jax.config.update("jax_platforms", value)
  jax.config.update("jax_platforms", old)


@pytest.mark.parametrize("platforms, expected", [
    ("cpu", True), (" cpu ", True), ("cuda", False), ("tpu", False), ("rocm", False),
    ("cuda,cpu", False), ("cpu,tpu", False)])
def test_cpu_only_follows_jax_platforms_whatever_is_installed(
    plugins, jax_platforms, platforms, expected):
  jax_platforms(platforms)
  assert host.cpu_only() == expected
  plugins("jax_cuda12_plugin")
  assert host.cpu_only() == expected


@pytest.mark.parametrize("platforms", [None, ""])
def test_cpu_only_without_jax_platforms_looks_for_accelerator_plugins(
    plugins, jax_platforms, platforms):
  jax_platforms(platforms)
  assert host.accelerator_plugins() == [] and host.cpu_only()

  plugins("libtpu")
  assert host.accelerator_plugins() == ["libtpu"] and not host.cpu_only()


@pytest.mark.parametrize("kind", ["namespace", "entry_point", "env", "tpu_library"])
def test_accelerator_plugins_are_found_as_jax_finds_them(
    plugins, jax_platforms, monkeypatch, tmp_path, kind):
  jax_platforms(None)
  if kind == "namespace":  # a PJRT plugin module of the jax_plugins namespace package
    (tmp_path / "xla_cuda12").mkdir()
    (tmp_path / "xla_cuda12" / "__init__.py").write_text("raise ImportError('not imported')\n")
    namespace = importlib.machinery.ModuleSpec("jax_plugins", None, is_package=True)
    namespace.submodule_search_locations = [str(tmp_path)]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        namespace if name == "jax_plugins" else find_spec(name, *args)))
    expected = ["jax_plugins.xla_cuda12"]
  elif kind == "entry_point":
    entry = importlib.metadata.EntryPoint("rocm", "my_rocm_plugin", "jax_plugins")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [entry] if group == "jax_plugins" else [])
    expected = ["my_rocm_plugin"]
  elif kind == "env":
    monkeypatch.setenv("PJRT_NAMES_AND_LIBRARY_PATHS", "mygpu:/opt/mygpu/pjrt.so")
    expected = ["PJRT_NAMES_AND_LIBRARY_PATHS"]
  else:
    (tmp_path / "libtpu.so").write_bytes(b"")
    monkeypatch.setenv("TPU_LIBRARY_PATH", str(tmp_path / "libtpu.so"))
    expected = ["TPU_LIBRARY_PATH"]
  assert host.accelerator_plugins() == expected
  assert not host.cpu_only()


def test_use_cpu_cores_leaves_an_accelerator_host_alone(plugins, jax_platforms, caplog):
  jax_platforms("tpu")
  before = jax.config.jax_num_cpu_devices
  with caplog.at_level(logging.INFO):
    assert host.use_cpu_cores([6], 3) is None
  assert jax.config.jax_num_cpu_devices == before
  assert "Not a CPU-only host (JAX_PLATFORMS=tpu" in caplog.text
