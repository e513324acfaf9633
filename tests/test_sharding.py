"""The train step and the evaluation bound sharded over 8 devices match one device.

Also what the sharded programs communicate: the train step one all-reduce (the gradients), a
conv's kernel gradient one all-reduce after its loop over chunks, never one inside it.

Runs in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must
be set before JAX starts). Run as a script it does the comparison itself.
"""

import re
import subprocess
import sys

import jax
import pytest

import helpers



@pytest.mark.slow
def test_sharded_step_and_bound_match_single_device():
  """One process of 8 devices: the step and the bound on 1 and on 8 devices, and the compiled
  HLO of the sharded step and of a conv's kernel gradient (what XLA makes of the
  communication), all with XLA's optimisations off: 25-40 s on 2 cores, mostly compiling."""
  result = subprocess.run([sys.executable, __file__], env=helpers.child_env(cpu_devices=8),
                          cwd=helpers.REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  assert "sharded step matches" in result.stdout  # and communicates once
  assert "sharded bound matches" in result.stdout
  assert "kernel gradient reduces across devices once" in result.stdout


def _compare():
  import numpy as np  # pylint: disable=g-import-not-at-top

  from helpers import mock_splits, small_config  # pylint: disable=g-import-not-at-top
  from vma_jax import cells  # pylint: disable=g-import-not-at-top
  from vma_jax.cpu import convolution  # pylint: disable=g-import-not-at-top
  from vma_jax import episodes as episodes_lib  # pylint: disable=g-import-not-at-top
  from vma_jax import model as vma_model  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top
  from vma_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from vma_jax import train  # pylint: disable=g-import-not-at-top

  devices = jax.local_devices()
  assert len(devices) == 8, devices
  # XLA's optimisations off: the comparison is of what the programs compute. The collectives
  # come from XLA's HLO passes (SPMD partitioning, all-reduce combining), which run at every
  # optimisation level: the HLO below has those of a program compiled with them on.
  jax.config.update("jax_disable_most_optimizations", True)
  # Every conv's kernel gradient as matrix products (the recipe's path), summed over shards.
  convolution._MIN_ROWS = 0  # pylint: disable=protected-access
  # With eps = 1 Adam's update is nearly linear in these gradients (|g| << 1 mostly), so the
  # comparison sees the gradients' float32 differences; with a tiny eps, reduction-order noise
  # in a near-zero gradient would flip the sign of an lr-sized step.
  config = small_config(train__batch_size=16, optim__eps=1.0)
  data = episodes_lib.EpisodeData.from_split(mock_splits()["train"])
  results = {}
  for name, mesh_devices in (("single", devices[:1]), ("sharded", devices)):
    mesh = sharding.make_mesh(mesh_devices)
    state = state_lib.init_train_state(config, jax.random.key(0), mesh)
    sample = train.make_episode_sampler(config, mesh)
    train_step = train.make_train_step(config, mesh=mesh)
    for step in range(2):
      episodes, key = sample(data, jax.random.key(1), np.int32(step))
      if name == "sharded":  # the batch is split over all 8 devices
        assert len(episodes.x_BxHxW.sharding.device_set) == 8
        assert episodes.x_BxHxW.addressable_shards[0].data.shape[0] == 2
      if name == "sharded" and step == 0:
        # Episodes stay on their device (targets and memories are encoded in episode-major
        # order): the step's only communication is one all-reduce of the gradients.
        hlo = train_step.lower(state, episodes, key).compile().as_text()
        assert _collectives(hlo) == ["all-reduce"], _collectives(hlo)
      state, metrics = train_step(state, episodes, key)
    assert state.params["params"]["dummies"].sharding.is_fully_replicated
    results[name] = jax.device_get((state.params, state.opt_state, metrics))

  single, sharded = results["single"], results["sharded"]
  assert jax.tree.structure(single) == jax.tree.structure(sharded)
  # The batch is summed in another order (per shard, then across shards), so float32 results
  # differ where large terms cancel: the gradient norm is ~200 at initialisation, and the
  # VIMCO signal L_K - L^{-k} is a difference of log-weights of ~-470 nats. Leaves with tiny
  # early updates (the address network's) then agree to ~2% of their scale, the others to
  # ~1e-3. A sharding bug (one shard's gradient, a wrong mean, other samples) is an O(1)
  # difference. So: updates and optimiser moments agree to 5% of their leaf's largest value,
  # the metrics to 1e-4 relative.
  # An update is a difference of float32 parameters, so it is also off by up to an ulp of
  # the parameters (the address network's first updates are a few ulps).
  def check(name, tree_a, tree_b, params=None):
    params = jax.tree.leaves(params) if params is not None else [None] * len(
        jax.tree.leaves(tree_a))
    for (path, a), b, p in zip(jax.tree_util.tree_flatten_with_path(tree_a)[0],
                               jax.tree.leaves(tree_b), params):
      a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
      scale = float(np.max(np.abs(a))) if a.size else 0.0
      ulp = float(np.spacing(np.max(np.abs(p)))) if p is not None and p.size else 0.0
      np.testing.assert_allclose(b, a, rtol=0, atol=5e-2 * scale + 2 * ulp,
                                 err_msg=name + jax.tree_util.keystr(path))

  init = jax.device_get(state_lib.create_train_state(config, jax.random.key(0)).params)
  update = lambda params: jax.tree.map(lambda new, old: new - old, params, init)
  check("update", update(single[0]), update(sharded[0]), params=init)
  check("opt_state", single[1], sharded[1])
  for name in single[2]:
    np.testing.assert_allclose(sharded[2][name], single[2][name], rtol=1e-4, atol=1e-6,
                               err_msg=name)
  # The samples drawn (addresses, hence these fractions) are identical, not just close.
  assert single[2]["frac_dummy"] == sharded[2]["frac_dummy"]
  assert single[2]["frac_same_class"] == sharded[2]["frac_same_class"]
  print("sharded step matches the single-device step")

  # Evaluation: 16 targets over 8 devices give each target's bound of one device.
  params = jax.device_get(single[0])
  test_data = episodes_lib.EpisodeData.from_split(mock_splits()["test"])
  targets_N = episodes_lib.target_indices(test_data.num_images, 16)
  bounds = {}
  for name, mesh_devices in (("single", devices[:1]), ("sharded", devices)):
    mesh = sharding.make_mesh(mesh_devices)
    bound_fn = cells.make_cell_fn(
        vma_model.make_model(config), cells.Cell(2, 3), num_importance=20, chunk_size=8,
        mesh=mesh)
    bounds[name] = cells.cell_values(bound_fn, params, test_data, jax.random.key(2),
                                     targets_N, batch_size=16)["bound"]
  np.testing.assert_allclose(bounds["sharded"], bounds["single"], rtol=1e-5)
  print("sharded bound matches the single-device bound")
  _check_kernel_gradient_collectives(sharding.make_mesh(devices), convolution)


def _collectives(hlo):
  return re.findall(r" (all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter)"
                    r"(?:-start)?\(", hlo)


def _check_kernel_gradient_collectives(mesh, convolution):
  """A conv's kernel gradient on a sharded batch: one all-reduce, after the chunk loop."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  x = jnp.ones((128, 13, 13, 48))  # 21,632 output pixels: over `_MIN_ROWS`
  kernel = jnp.ones((3, 3, 48, 48))
  loss = lambda k, x: jnp.sum(convolution.conv2d(x, k, (1, 1), ((1, 1), (1, 1))) ** 2)
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  grad_fn = jax.jit(jax.grad(loss), in_shardings=(replicated, batch), out_shardings=replicated)
  hlo = grad_fn.lower(kernel, x).compile().as_text()
  computations = re.split(r"\n(?=\S)", hlo)
  loop_bodies = [c for c in computations if " while(" not in c and "ENTRY" not in c]
  entry = next(c for c in computations if c.startswith("ENTRY"))
  assert " while(" in hlo, "the kernel gradient is not a loop over chunks"
  assert not any(_collectives(c) for c in loop_bodies), "a collective inside a loop"
  assert _collectives(entry) == ["all-reduce"], _collectives(entry)
  print("kernel gradient reduces across devices once")


if __name__ == "__main__":
  _compare()
