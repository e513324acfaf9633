"""The runtime check of the notebooks' first cell: requirements read from setup.py, what is
installed compared with them, the one-line upgrade message, and a pip command that keeps JAX."""

import importlib.metadata

from packaging.requirements import Requirement
import pytest

from vma_jax import runtime


def test_requirements_are_setup_pys_for_this_machine():
  names = [r.name for r in runtime.requirements()]
  assert names[:4] == ["absl-py", "jax", "flax", "optax"]
  assert "packaging" in names and "tqdm" in names
  # One of the two TensorFlow lines applies, by its environment marker.
  assert ("tensorflow-cpu" in names) != ("tensorflow" in names)


def test_this_python_has_every_requirement():
  assert [str(s.requirement) for s in runtime.check() if not s.ok] == []
  assert runtime.upgrade_message(runtime.check()) is None
  assert runtime.install_command(runtime.check()) is None


def test_too_old_missing_and_alternatives():
  numpy = importlib.metadata.version("numpy")
  installed_tf = "tensorflow-cpu" if runtime._version("tensorflow-cpu") else "tensorflow"  # pylint: disable=protected-access
  other_tf = "tensorflow" if installed_tf == "tensorflow-cpu" else "tensorflow-cpu"
  statuses = runtime.check([Requirement("numpy>=1.0"), Requirement("numpy>=999"),
                            Requirement("no-such-distribution-vma>=1"),
                            Requirement(f"{other_tf}>=2.0")])
  assert [s.ok for s in statuses] == [True, False, False, True]
  assert statuses[1].version == numpy and statuses[2].version is None
  assert statuses[3].found == installed_tf  # the other TensorFlow build serves
  assert runtime.upgrade_message(statuses) == (
      f"this Python's numpy {numpy} is older than vma_jax needs: upgrade with pip install -U "
      "'numpy>=999', then restart the runtime.")
  jax_too_old = runtime.check([Requirement("jax>=999")])
  assert "accelerator build, e.g. 'jax[tpu]'" in runtime.upgrade_message(jax_too_old)

  command = runtime.install_command(statuses)
  assert command[1:5] == ["-m", "pip", "install", "-q"]
  assert "no-such-distribution-vma>=1" in command and "numpy>=999" not in command
  with open(command[command.index("-c") + 1]) as f:  # the installed JAX stays as it is
    pins = f.read().split()
  assert pins == [f"jax=={importlib.metadata.version('jax')}",
                  f"jaxlib=={importlib.metadata.version('jaxlib')}"]


def test_ensure_stops_on_what_it_must_not_change(monkeypatch):
  monkeypatch.setattr(runtime, "requirements", lambda: [Requirement("numpy>=999")])
  with pytest.raises(RuntimeError, match=r"^this Python's numpy .* older than vma_jax needs"):
    runtime.ensure()
  monkeypatch.setattr(runtime, "requirements", lambda: [Requirement("no-such-distribution-vma")])
  with pytest.raises(RuntimeError, match="^missing: no-such-distribution-vma$"):
    runtime.ensure(install=False)
