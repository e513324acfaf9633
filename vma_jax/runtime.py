"""Whether this Python has what vma_jax needs: each requirement of the package checked against
what is installed, one line saying what to upgrade when something is too old, and the pip
command that installs what is missing without replacing the JAX already there (a runtime's
TPU or GPU build).

For the notebooks' first cell, before anything heavy is imported (this module needs only the
standard library and `packaging`):

    from vma_jax import runtime
    runtime.ensure()  # installs what is missing; one-line RuntimeError if something is too old
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
import tempfile
from typing import NamedTuple, Sequence

from packaging.requirements import Requirement

SETUP_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")

# Distributions that satisfy a requirement in place of the one named: a runtime's full
# TensorFlow build serves where setup.py asks for the CPU build, and the reverse.
ALTERNATIVES = {"tensorflow-cpu": ("tensorflow",), "tensorflow": ("tensorflow-cpu",)}

# Pinned at their installed versions when installing what is missing: pip must not replace
# the runtime's accelerator build of JAX with the CPU one from PyPI.
KEPT = ("jax", "jaxlib")


def requirements(setup_py: str | None = None) -> list[Requirement]:
  """The package's install_requires that apply to this machine: from setup.py (default: the
  clone's, beside the package), else from the installed distribution's metadata."""
  setup_py = SETUP_PY if setup_py is None else setup_py
  if os.path.exists(setup_py):
    texts = _install_requires(setup_py)
  else:
    texts = [t for t in importlib.metadata.requires("vma_jax") or [] if "extra ==" not in t]
  parsed = [Requirement(text) for text in texts]
  return [r for r in parsed if r.marker is None or r.marker.evaluate()]


def _install_requires(setup_py: str) -> list[str]:
  with open(setup_py) as f:
    tree = ast.parse(f.read(), setup_py)
  for node in ast.walk(tree):
    if isinstance(node, ast.keyword) and node.arg == "install_requires":
      return list(ast.literal_eval(node.value))
  raise ValueError(f"{setup_py} has no install_requires")


class Status(NamedTuple):
  """One requirement, and what this Python has of it."""

  requirement: Requirement
  found: str | None  # the distribution found (the one named, or an alternative)
  version: str | None  # its version; None if none is installed

  @property
  def ok(self) -> bool:
    return self.version is not None and self.requirement.specifier.contains(
        self.version, prereleases=True)


def _version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def check(required: Sequence[Requirement] | None = None) -> list[Status]:
  """The Status of every requirement (default: `requirements()`)."""
  statuses = []
  for requirement in requirements() if required is None else required:
    status = Status(requirement, None, None)
    for name in (requirement.name, *ALTERNATIVES.get(requirement.name, ())):
      version = _version(name)
      if version is not None:
        status = Status(requirement, name, version)
        if status.ok:
          break
    statuses.append(status)
  return statuses


def upgrade_message(statuses: Sequence[Status]) -> str | None:
  """One line naming what is installed but too old, and how to upgrade it; None if nothing."""
  old = [s for s in statuses if s.version is not None and not s.ok]
  if not old:
    return None
  found = ", ".join(f"{s.found} {s.version}" for s in old)
  needed = " ".join(f"'{s.requirement.name}{s.requirement.specifier}'" for s in old)
  jax = (" (for JAX on a TPU or GPU, its accelerator build, e.g. 'jax[tpu]' or "
         "'jax[cuda12]')" if any(s.requirement.name in KEPT for s in old) else "")
  return (f"this Python's {found} {'is' if len(old) == 1 else 'are'} older than vma_jax "
          f"needs: upgrade with pip install -U {needed}{jax}, then restart the runtime.")


def install_command(statuses: Sequence[Status]) -> list[str] | None:
  """The pip command that installs the missing requirements, with the installed JAX pinned
  (a constraints file); None if nothing is missing."""
  missing = [str(s.requirement) for s in statuses if s.version is None]
  if not missing:
    return None
  pins = [f"{name}=={version}" for name in KEPT if (version := _version(name)) is not None]
  command = [sys.executable, "-m", "pip", "install", "-q", *missing]
  if pins:
    fd, path = tempfile.mkstemp(prefix="vma_jax_constraints_", suffix=".txt")
    with os.fdopen(fd, "w") as f:
      f.write("\n".join(pins) + "\n")
    command += ["-c", path]
  return command


def ensure(install: bool = True) -> list[Status]:
  """Checks the requirements: raises RuntimeError (one line) if something installed is too
  old; installs what is missing (with `install`), keeping the installed JAX. Returns the
  statuses found before installing."""
  statuses = check()
  message = upgrade_message(statuses)
  if message:
    raise RuntimeError(message)
  command = install_command(statuses)
  if command is not None:
    if not install:
      raise RuntimeError("missing: " + ", ".join(
          str(s.requirement) for s in statuses if s.version is None))
    subprocess.run(command, check=True)
  return statuses
