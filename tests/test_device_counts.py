"""Checkpoints restore on any device count: train on 8 CPU devices, resume on 2, evaluate on
1 and on 3.

A process has one CPU device count, fixed before JAX starts, so each count is a subprocess:
of the entry points (train.py, evaluate.py with --cpu_devices), or of this file run as a
script (`python tests/test_device_counts.py WORKDIR`: saves a checkpoint of arrays replicated
over 2 devices).
"""

import functools
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import helpers
from vma_jax import model as vma_model


def _distinct_params(config):
  """Parameters of `config`'s model, each leaf distinct (leaf i: i + 0, 1, 2, ... / 1000).

  Cheaper than initialising them, and a leaf restored into another's place shows.
  """
  abstract = jax.eval_shape(functools.partial(vma_model.init_params, config),
                            jax.random.key(0))
  leaves, treedef = jax.tree.flatten(abstract)
  return jax.tree.unflatten(treedef, [
      (i + np.arange(leaf.size).reshape(leaf.shape) / 1000).astype(leaf.dtype)
      for i, leaf in enumerate(leaves)])


def _save_on_two_devices(workdir):
  """Saves step 1 of `_distinct_params`, replicated over 2 devices."""
  jax.config.update("jax_num_cpu_devices", 2)
  import optax  # pylint: disable=g-import-not-at-top
  from vma_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top

  config = helpers.small_config()
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 2, mesh
  replicated, _ = sharding.shardings(mesh)
  params = jax.device_put(_distinct_params(config), replicated)
  checkpoints.save_config(workdir, config)
  manager = checkpoints.make_manager(workdir)
  checkpoints.save(manager, 1, params, optax.adam(1e-3).init(params), config)
  manager.wait_until_finished()
  manager.close()


@pytest.mark.slow
def test_restore_params_onto_one_device_of_a_checkpoint_written_on_two(tmp_path):
  from vma_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "run")
  env = helpers.child_env()
  env["XLA_FLAGS"] = helpers.SUITE_XLA_FLAGS  # no forced device count: --cpu_devices
  result = subprocess.run([sys.executable, __file__, workdir], env=env, cwd=helpers.REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-4000:]

  expected = _distinct_params(helpers.small_config())
  mesh = sharding.make_mesh(jax.local_devices()[:1])
  for restore_mesh in (mesh, None):  # one device, then all of this process's
    params, step, _ = checkpoints.restore_params(workdir, mesh=restore_mesh)
    assert step == 1
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    on = mesh if restore_mesh is not None else sharding.make_mesh()
    for leaf, expected_leaf in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
      assert leaf.sharding == sharding.shardings(on)[0]
      np.testing.assert_array_equal(leaf, expected_leaf)


def _run(args, env):
  result = subprocess.run([sys.executable, *args], env=env, cwd=helpers.REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


@pytest.mark.slow
def test_train_on_8_devices_resume_on_2_evaluate_on_1_and_3(
    tmp_path, archive_dir, omniglot_data_dir):
  """Four processes, one per device count, each compiling its programs for that count (and
  saving replicated checkpoints device by device): a few minutes on 2 cores."""
  env = helpers.child_env(VMA_OMNIGLOT_DIR=archive_dir, TFDS_DATA_DIR=omniglot_data_dir,
                          JAX_COMPILATION_CACHE_DIR=helpers.CACHE_DIR,
                          JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env["XLA_FLAGS"] = helpers.SUITE_XLA_FLAGS  # no forced device count: --cpu_devices
  workdir = tmp_path / "run"
  # Batches of 8: a multiple of every training device count (8, then 2).
  train = ["train.py", "--config=configs/quick.py", f"--workdir={workdir}",
           "--config.model.latent_dim=8", "--config.model.embed_dim=16",
           "--config.model.match_dim=16", "--config.train.batch_size=8",
           "--config.validation.batch_size=8", "--config.train.log_every=1",
           # One checkpoint per run (steps 2 and 4), each saved device by device.
           "--config.train.checkpoint_every=2", "--config.train.validate_every=0",
           "--config.train.image_every=0",
           # No event files (nothing here reads them): the children never import TensorFlow.
           "--config.train.tensorboard=False"]
  _run(train + ["--config.train.num_steps=2", "--cpu_devices=8"], env)
  result = _run(train + ["--config.train.num_steps=4", "--cpu_devices=2"], env)
  assert "Resumed from step 2" in result.stderr
  assert "Training 4 steps from step 2 on 2 device(s)" in result.stderr

  # 6 targets in batches of 3: a multiple of every evaluation device count (1, then 3).
  evaluate = ["evaluate.py", f"--workdir={workdir}", "--cells=1:2", "--num_importance=4",
              "--chunk_size=4", "--num_targets=6", "--batch_size=3"]
  results = {}
  for num_devices in (1, 3):
    _run(evaluate + [f"--cpu_devices={num_devices}"], env)
    results[num_devices] = json.loads((workdir / "eval" / "results.json").read_text())
    shutil.rmtree(workdir / "eval")  # the next count evaluates every cell again
  for num_devices, saved in results.items():
    assert saved["meta"]["step"] == 4 and saved["meta"]["num_devices"] == num_devices
    assert [r["num_targets"] for r in saved["results"]] == [6]
  # Each target's episode and samples depend only on the seed, the cell and the target, not
  # on the batch or the devices; only the float32 sums over differently sharded batches
  # round differently, far below 1e-3 nats at bounds of a few hundred nats.
  bound_1, bound_3 = (saved["results"][0]["bound"] for saved in results.values())
  assert abs(bound_1 - bound_3) < 1e-3, (bound_1, bound_3)


if __name__ == "__main__":
  # python tests/test_device_counts.py WORKDIR: the subprocess of the restore test.
  _save_on_two_devices(sys.argv[1])
