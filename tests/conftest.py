"""Shared data fixtures: the real Omniglot splits, prepared once per session.

The archives are found through $VMA_OMNIGLOT_DIR, else <repo>/../shared/data/omniglot;
tests that need them skip when neither exists. Preparation goes to $TFDS_DATA_DIR when it
is set (so repeated runs reuse the cache), else to a session temp dir (about a minute on
2 cores, once).
"""

import fcntl
import os

import jax
import pytest

try:
  # TFP (the VIMCO baselines' reference) must be imported before TensorFlow is: once TF is
  # loaded, importing TFP requires tf_keras, which would pull in a second TensorFlow build.
  from tensorflow_probability.substrates import numpy as _tfp  # noqa: F401
except ImportError:
  pass

import helpers  # noqa: F401  (configures JAX for every test: helpers.configure_jax)

REPO_ROOT = helpers.REPO_ROOT


def find_archive_dir() -> str | None:
  """The folder with the four Omniglot zips, or None."""
  candidate = (os.environ.get("VMA_OMNIGLOT_DIR")
               or str(REPO_ROOT.parent / "shared" / "data" / "omniglot"))
  return candidate if os.path.isfile(os.path.join(candidate, "images_background.zip")) else None


@pytest.fixture(scope="session")
def archive_dir() -> str:
  found = find_archive_dir()
  if found is None:
    pytest.skip("Omniglot archives not found: set VMA_OMNIGLOT_DIR or provide "
                "../shared/data/omniglot")
  return found


@pytest.fixture(scope="session")
def omniglot_data_dir(tmp_path_factory) -> str:
  return os.environ.get("TFDS_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))


def _load(split, archive_dir, data_dir):
  from vma_jax import data  # pylint: disable=g-import-not-at-top

  # Test processes running side by side (pytest -n) share $TFDS_DATA_DIR: one prepares a
  # split while the others wait, then read its cache.
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, ".vma_jax_tests.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    return data.load_omniglot(split, image_size=26, data_dir=data_dir, archive_dir=archive_dir)


@pytest.fixture(scope="session")
def omniglot_train(archive_dir, omniglot_data_dir):
  return _load("train", archive_dir, omniglot_data_dir)


@pytest.fixture(scope="session")
def omniglot_test(archive_dir, omniglot_data_dir):
  return _load("test", archive_dir, omniglot_data_dir)


@pytest.fixture(scope="session")
def omniglot_small1(archive_dir, omniglot_data_dir):
  return _load("small1", archive_dir, omniglot_data_dir)


@pytest.fixture
def untrained_run(tmp_path, archive_dir, omniglot_data_dir, omniglot_test) -> str:
  """A workdir with one checkpoint (step 3) of the recipe's untrained model at small_config's
  head sizes (its encoders and decoder are the recipe's), its data config pointing at the
  session's prepared Omniglot."""
  import optax  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from vma_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from vma_jax import model as vma_model  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.model.update(helpers.SMALL_HEADS)
  config.data.archive_dir, config.data.data_dir = archive_dir, omniglot_data_dir
  params = vma_model.init_params(config, jax.random.key(1))
  workdir = str(tmp_path / "run")
  checkpoints.save_config(workdir, config)
  manager = checkpoints.make_manager(workdir)
  checkpoints.save(manager, 3, params, optax.adam(1e-4).init(params), config)
  manager.wait_until_finished()
  manager.close()
  return workdir
