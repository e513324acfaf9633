"""What the tests share: JAX settings, mock data, a shrunken config, parameter comparisons,
and child processes with their own device count.

Imported by conftest.py (so `configure_jax` holds for every test) and by test files as
`import helpers`. A child process started with `child_env` finds this module, the package
and configs/ on its path, and starts with the same JAX settings when it imports this module.

Run as a script, `python tests/helpers.py train WORKDIR NUM_STEPS` trains `small_config` on
`mock_splits` in WORKDIR (the child that the SIGKILL test kills).
"""

import os
import pathlib
import sys
import tempfile

import jax
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"
# Every train_and_evaluate call builds fresh jitted functions; the persistent cache lets the
# second and later compiles of the same program (in this process or a child) be loads.
CACHE_DIR = os.path.join(tempfile.gettempdir(), "vma_jax_test_compilation_cache")


def configure_jax() -> None:
  """The settings every test runs under: implicit rank promotion is an error, XLA's
  optimisation passes are off (SUITE_ENV) and compiled programs are cached on disk."""
  jax.config.update("jax_numpy_rank_promotion", "raise")
  jax.config.update("jax_disable_most_optimizations", True)
  jax.config.update("jax_compilation_cache_dir", CACHE_DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


# XLA:CPU's loop emitters instead of its fusion emitters: about half the compile time of the
# model's training step on 2 cores (4.3 s -> 2.3 s with the optimisations off, small_config),
# and what the GPU check's dry run compiles with (benchmarks/gpu_check.DRY_RUN_XLA_FLAGS). Set
# before JAX starts its CPU backend, for this process and the children it starts.
SUITE_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"


def with_suite_xla_flags(xla_flags: str | None) -> str:
  flags = (xla_flags or "").split()
  return " ".join(flags + [f for f in SUITE_XLA_FLAGS.split() if f not in flags])


# The suite checks what programs compute, never how fast (benchmarks/ time them): XLA's
# optimisation passes off, here and in the children it starts. On 2 cores, small_config's
# init compiles in 2.5 s instead of 12.5 s and its train step in 1.5 s instead of 5 s, and a
# step still takes a fraction of a second. Child commands also skip their re-execution for glibc's
# allocator (vma_jax/cpu/host.py): one process start, not two. Tests of either behaviour set
# their own environment.
SUITE_ENV = {"JAX_DISABLE_MOST_OPTIMIZATIONS": "1", "GLIBC_TUNABLES": ""}

os.environ["XLA_FLAGS"] = with_suite_xla_flags(os.environ.get("XLA_FLAGS"))
for _name, _value in SUITE_ENV.items():
  os.environ.setdefault(_name, _value)
configure_jax()
# Child processes (commands, benchmark scripts, notebook kernels) load what the suite, or an
# earlier child, compiled: a command run twice compiles once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", CACHE_DIR)


def child_env(cpu_devices: int | None = None, **extra: str) -> dict[str, str]:
  """The environment of a child process: on CPU, with `cpu_devices` devices if given, the
  repository and tests/ on PYTHONPATH."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  paths = [str(REPO_ROOT), str(TESTS_DIR)] + [p for p in [env.get("PYTHONPATH")] if p]
  env["PYTHONPATH"] = os.pathsep.join(paths)
  if cpu_devices is not None:
    env["XLA_FLAGS"] = with_suite_xla_flags(
        f"--xla_force_host_platform_device_count={cpu_devices}")
  return env


class MockSplit:
  """An OmniglotSplit-like split of random binary images, `per_class` images per class."""

  def __init__(self, seed, num_classes=10, per_class=20, image_size=26):
    rng = np.random.default_rng(seed)
    self.images_NxHxW = (rng.random((num_classes * per_class, image_size, image_size)) < 0.2
                         ).astype(np.uint8)
    self.labels_N = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    self.alphabets_N = np.zeros_like(self.labels_N)
    self.num_classes = num_classes
    self.image_size = image_size
    self.cache_path = ""


def mock_splits():
  return {"train": MockSplit(0), "test": MockSplit(1)}


def write_mock_cache(data_dir, seed=0, num_classes=10, per_class=20, image_size=26):
  """A numpy cache of random binary Omniglot-like train and test splits in `data_dir`, as
  vma_jax.data writes it (for commands run as child processes)."""
  from vma_jax import data  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  for split in ("train", "test"):
    path = data.cache_path(str(data_dir), split, image_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    labels_N = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    np.savez(path, images_NxHxW=(rng.random((labels_N.size, image_size, image_size)) < 0.2
                                 ).astype(np.uint8),
             labels_N=labels_N, alphabets_N=np.zeros_like(labels_N),
             cache_format=np.int32(data.CACHE_FORMAT))


# The model's heads at tiny sizes: the networks' paths, in seconds per compile.
SMALL_HEADS = dict(latent_dim=8, embed_dim=16, match_dim=16)


def small_config(**overrides):
  """The default config shrunk to seconds per run: tiny heads, B = 4, T = 4, K = 2, no
  TensorBoard files.

  Overrides are dotted names with "__" for ".": small_config(train__num_steps=3).
  """
  from configs import default  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.model.update(SMALL_HEADS)
  config.episodes.update(memory_size=4, per_class=2)
  config.objective.num_importance = 2
  config.optim.lr = 1e-3
  # No event files: a run never imports TensorFlow (seconds in each child process).
  config.train.update(batch_size=4, num_steps=2, log_every=1, checkpoint_every=1,
                      max_checkpoints=100, validate_every=0, image_every=0, tensorboard=False)
  config.validation.update(max_classes=2, memory_size=3, num_targets=6, num_importance=3,
                           batch_size=4, chunk_size=2)
  for dotted, value in overrides.items():
    *parents, name = dotted.split("__")
    node = config
    for parent in parents:
      node = node[parent]
    node[name] = value
  return config


def leaves(params):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(params)]


def assert_params_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for leaf_a, leaf_b in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(leaf_a, leaf_b)


def _train_main(workdir: str, num_steps: str) -> None:
  from absl import logging  # pylint: disable=g-import-not-at-top
  from vma_jax import train  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  train.train_and_evaluate(small_config(train__num_steps=int(num_steps)), workdir,
                           splits=mock_splits())


if __name__ == "__main__":
  if sys.argv[1:2] != ["train"] or len(sys.argv) != 4:
    sys.exit("usage: python tests/helpers.py train WORKDIR NUM_STEPS")
  _train_main(*sys.argv[2:])
