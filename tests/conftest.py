"""Shared data fixtures: the real Omniglot splits, prepared once per session.

The archives are found through $VMA_OMNIGLOT_DIR, else <repo>/../shared/data/omniglot;
tests that need them skip when neither exists. Preparation goes to $TFDS_DATA_DIR when it
is set (so repeated runs reuse the cache), else to a folder of the session's temp dir: once
per session, in a child process while the tests that need no data run (half a minute to a
minute on 2 cores).
"""

import collections
import fcntl
import importlib.abc
import os
import shutil
import subprocess
import sys

import jax
import pytest


class _WithoutTensorFlow(importlib.abc.MetaPathFinder):
  """Makes `import tensorflow` fail while it is on sys.meta_path."""

  def find_spec(self, name, path=None, target=None):
    if name.partition(".")[0] == "tensorflow":
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    return None


# TFP's numpy substrate (test_vimco's reference for the VIMCO baselines) imports TensorFlow, if
# it can, only to copy docstrings: some 10 s per test process. Once TensorFlow is loaded it also
# wants tf_keras, which would pull in a second TensorFlow build. So it is imported here, before
# anything loads TensorFlow, with TensorFlow hidden.
_hide_tensorflow = _WithoutTensorFlow()
sys.meta_path.insert(0, _hide_tensorflow)
try:
  from tensorflow_probability.substrates.numpy import stats as _tfp_stats  # noqa: F401
except ImportError:
  pass
finally:
  sys.meta_path.remove(_hide_tensorflow)

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
  """$TFDS_DATA_DIR, else a folder of the session's temp root (one for all pytest -n workers)."""
  if os.environ.get("TFDS_DATA_DIR"):
    return os.environ["TFDS_DATA_DIR"]
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # Each worker's basetemp is a folder of the session's.
  return str(root / "tfds")


# The lock that test processes take to prepare or read the Omniglot cache in a data dir.
LOCK_NAME = ".vma_jax_tests.lock"
IMAGE_SIZE = 26
# The fixtures below that load a split, by split.
SPLIT_FIXTURES = {"omniglot_train": "train", "omniglot_test": "test",
                  "omniglot_small1": "small1"}


def _loads_a_split(item) -> bool:
  return any(name in item.fixturenames for name in SPLIT_FIXTURES)


def pytest_configure(config):
  # pytest-xdist hands out the files in the order pytest_collection_modifyitems leaves them.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items):
  """The order pytest-xdist hands out the files in, each to the next free process.

  Files with the most selected `slow` tests first: the long files start early, the short
  ones fill the end, and the two processes finish closer together (the whole suite's order;
  without slow tests, as with -m "not slow", this key is the same for every file). Then, as
  pytest-xdist would order them, files with the most tests first, but those with tests that
  load an Omniglot split last, and those tests last within their file: time for
  `_prepare_omniglot_meanwhile`'s child to prepare the splits while the rest run.
  """
  first, count, slow, loads = {}, collections.Counter(), collections.Counter(), set()
  for index, item in enumerate(items):
    first.setdefault(item.path, index)
    count[item.path] += 1
    slow[item.path] += item.get_closest_marker("slow") is not None
    if _loads_a_split(item):
      loads.add(item.path)
  items.sort(key=lambda item: (-slow[item.path], item.path in loads, -count[item.path],
                               first[item.path], _loads_a_split(item)))


def _ram_disk() -> str | None:
  """/dev/shm where it is a writable RAM disk with room for the extracted archives: there they
  are written and removed in about 2 s instead of 20 on a 2-core machine's disk."""
  path = "/dev/shm"
  if os.path.isdir(path) and os.access(path, os.W_OK) and shutil.disk_usage(path).free > 2**30:
    return path
  return None


@pytest.fixture(scope="session", autouse=True)
def _prepare_omniglot_meanwhile(request, omniglot_data_dir, tmp_path_factory):
  """Prepares the splits that the session's tests load in a child process that holds the
  data dir's lock, while the tests that need no data run; no test process then imports
  TensorFlow for it. A test that loads a split waits for the lock (and, were the split still
  missing, prepares it itself); a child that failed fails the session's teardown."""
  from vma_jax import data  # pylint: disable=g-import-not-at-top

  splits = sorted({split for item in request.session.items
                   for name, split in SPLIT_FIXTURES.items() if name in item.fixturenames})
  archives = find_archive_dir()

  def cached():
    return all(os.path.exists(data.cache_path(omniglot_data_dir, split, IMAGE_SIZE))
               for split in splits)

  if not splits or archives is None or cached():
    yield
    return
  os.makedirs(omniglot_data_dir, exist_ok=True)
  log = tmp_path_factory.mktemp("omniglot") / "prepare.log"
  child = None
  with open(os.path.join(omniglot_data_dir, LOCK_NAME), "w") as lock, open(log, "w") as stderr:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      pass  # Another test process is preparing them.
    else:
      if not cached():
        # The child inherits the locked file: the lock is released when it exits.
        child = subprocess.Popen(
            [sys.executable, "-m", "vma_jax.data", f"--splits={','.join(splits)}",
             f"--image_size={IMAGE_SIZE}", f"--data_dir={omniglot_data_dir}",
             f"--archive_dir={archives}", f"--scratch_dir={_ram_disk() or ''}"],
            cwd=REPO_ROOT, env=helpers.child_env(), pass_fds=(lock.fileno(),),
            stdout=subprocess.DEVNULL, stderr=stderr)
  yield
  if child is not None and child.wait() != 0:
    pytest.fail(f"preparing Omniglot in a child process failed (exit {child.returncode}):\n"
                + log.read_text()[-2000:])


def _load(split, archive_dir, data_dir):
  from vma_jax import data  # pylint: disable=g-import-not-at-top

  # Test processes running side by side (pytest -n) share the data dir: one prepares a split
  # while the others wait, then read its cache.
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, LOCK_NAME), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    return data.load_omniglot(split, image_size=IMAGE_SIZE, data_dir=data_dir,
                              archive_dir=archive_dir)


@pytest.fixture(scope="session")
def omniglot_train(archive_dir, omniglot_data_dir):
  return _load("train", archive_dir, omniglot_data_dir)


@pytest.fixture(scope="session")
def omniglot_test(archive_dir, omniglot_data_dir):
  return _load("test", archive_dir, omniglot_data_dir)


@pytest.fixture(scope="session")
def omniglot_small1(archive_dir, omniglot_data_dir):
  return _load("small1", archive_dir, omniglot_data_dir)


@pytest.fixture(scope="session")
def _untrained_workdir(tmp_path_factory, archive_dir, omniglot_data_dir, omniglot_test) -> str:
  """`untrained_run`'s workdir, written once per test process."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from vma_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from vma_jax import model as vma_model  # pylint: disable=g-import-not-at-top
  from vma_jax import state  # pylint: disable=g-import-not-at-top

  config = default.get_config()
  config.model.update(helpers.SMALL_HEADS)
  config.data.archive_dir, config.data.data_dir = archive_dir, omniglot_data_dir
  params = vma_model.init_params(config, jax.random.key(1))
  workdir = str(tmp_path_factory.mktemp("untrained") / "run")
  checkpoints.save_config(workdir, config)
  manager = checkpoints.make_manager(workdir)
  checkpoints.save(manager, 3, params, state.make_optimizer(config.optim).init(params), config)
  manager.wait_until_finished()
  manager.close()
  return workdir


@pytest.fixture
def untrained_run(tmp_path, _untrained_workdir) -> str:
  """A workdir with one checkpoint (step 3) of the recipe's untrained model at small_config's
  head sizes (its encoders and decoder are the recipe's), its data config pointing at the
  session's prepared Omniglot: a fresh copy for each test, which may change it."""
  workdir = str(tmp_path / "run")
  shutil.copytree(_untrained_workdir, workdir)
  return workdir
