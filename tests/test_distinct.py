"""Distinct images of a batch: found exactly, and encoding them once changes nothing.

The sharded check runs in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4
(the flag must be set before JAX starts); run as a script this file does that check itself.
"""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers

from vma_jax import distinct
from vma_jax import model as vma_model
from vma_jax import sharding


def test_expected_distinct_matches_a_simulation():
  rng = np.random.default_rng(0)
  for num_rows, num_images in [(8448, 19280), (300, 200), (20, 10_000)]:
    counts = [len(np.unique(rng.integers(0, num_images, num_rows))) for _ in range(200)]
    assert distinct.expected_distinct(num_rows, num_images) == pytest.approx(
        np.mean(counts), rel=0.005)
  assert distinct.expected_distinct(1, 50) == pytest.approx(1.0)


def test_capacity_is_a_rounded_margin_above_the_expected_count():
  expected = distinct.expected_distinct(8448, 19280)
  u = distinct.capacity(8448, 19280, multiple=16)
  assert u % 16 == 0 and expected + 4 * math.sqrt(expected) <= u < expected + 4 * math.sqrt(
      expected) + 16
  assert distinct.worthwhile(8448, u)
  # Few repeats: nothing to save, and never more than the rows (rounded up).
  assert distinct.capacity(288, 19280, multiple=16) == 288
  assert not distinct.worthwhile(288, 288)
  assert distinct.capacity(20, 200, multiple=8) == 24
  with pytest.raises(ValueError, match="num_rows"):
    distinct.capacity(0, 10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_find_maps_every_row_to_a_row_with_the_same_id(seed):
  rng = np.random.default_rng(seed)
  ids_N = rng.integers(0, 60, 100).astype(np.int32)
  num_unique = len(np.unique(ids_N))
  rows = jax.jit(distinct.find, static_argnums=1)(ids_N, num_unique + 5)
  row_U, inverse_N = np.asarray(rows.row_U), np.asarray(rows.inverse_N)
  assert row_U.shape == (num_unique + 5,) and inverse_N.shape == (100,)
  assert distinct.fits(rows) and int(distinct.num_distinct(rows)) == num_unique
  np.testing.assert_array_equal(ids_N[row_U][inverse_N], ids_N)
  assert len(set(ids_N[row_U[:num_unique]].tolist())) == num_unique  # each id once
  # Any per-row data: gathering through the distinct rows gives it back.
  features_NxF = ids_N[:, None] * np.array([[1.0, -2.0, 0.5]])
  np.testing.assert_array_equal(features_NxF[row_U][inverse_N], features_NxF)


def test_find_reports_a_batch_that_does_not_fit_on_the_device():
  ids_N = np.arange(40, dtype=np.int32) % 30  # 30 distinct ids
  fits = jax.jit(lambda ids_N, capacity_u: distinct.fits(distinct.find(ids_N, capacity_u)),
                 static_argnums=1)
  exact = fits(ids_N, 30)
  assert isinstance(exact, jax.Array) and exact.shape == () and exact.dtype == jnp.bool_
  assert exact
  assert not fits(ids_N, 29)
  assert int(distinct.num_distinct(distinct.find(ids_N, 29))) == 30


def _episodes_with_repeats(seed=0, batch=3, memory=4, num_images=6, size=26, fits=True):
  """Episodes whose images repeat (ids drawn from a few images), and their distinct rows:
  room for all of them, or (fits=False) one row short."""
  rng = np.random.default_rng(seed)
  pool_IxHxW = (rng.random((num_images, size, size)) < 0.3).astype(np.float32)
  x_index_B = rng.integers(0, num_images, batch)
  memory_index_BxT = rng.integers(0, num_images, (batch, memory))
  ids_N = vma_model.stack_rows(jnp.asarray(x_index_B), jnp.asarray(memory_index_BxT))
  count = len(np.unique(np.asarray(ids_N)))
  rows = distinct.find(ids_N, num_images + 2 if fits else count - 1)
  assert bool(distinct.fits(rows)) == fits
  return pool_IxHxW[x_index_B], pool_IxHxW[memory_index_BxT], rows


@pytest.mark.parametrize("embed_slots, fits", [
    (False, True),
    # e of every slot through the same distinct rows: two more programs (5-6 s on 2 cores).
    pytest.param(True, True, marks=pytest.mark.slow),
    # Rows that do not fit run h inside a conditional: seconds on XLA:CPU.
    pytest.param(False, False, marks=pytest.mark.slow)])
def test_encode_through_distinct_rows_is_encode_of_every_row(embed_slots, fits):
  x_BxHxW, memory_BxTxHxW, rows = _episodes_with_repeats(fits=fits)
  model = vma_model.VMA(latent_dim=8, embed_dim=16, match_dim=16)
  key = jax.random.key(0)
  keys_BxK = vma_model.sample_keys(jax.random.split(key, 3), 0, 5)
  params = jax.jit(model.init)(key, x_BxHxW, memory_BxTxHxW, keys_BxK)

  def loss(params, distinct_rows):
    encoding = model.apply(params, x_BxHxW, memory_BxTxHxW, embed_slots=embed_slots,
                           distinct=distinct_rows, method="encode")
    weights = model.apply(params, x_BxHxW, encoding, keys_BxK,
                          method="log_weights")
    return jnp.sum(weights.log_w_BxK), encoding.address_logits_BxS

  # Jitted whole: op by op, each of the model's operations would compile alone.
  value_and_grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (value_all, logits_all), grads_all = value_and_grad(params, None)
  (value_once, logits_once), grads_once = value_and_grad(params, rows)
  np.testing.assert_allclose(logits_once, logits_all, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(value_once, value_all, rtol=1e-5)
  # Repeats' cotangents are summed into one row of h: the same gradient up to rounding.
  match_grads = jax.tree.leaves(grads_all["params"]["match"])
  assert any(np.abs(np.asarray(g)).max() > 0 for g in match_grads)
  for g_once, g_all in zip(jax.tree.leaves(grads_once), jax.tree.leaves(grads_all)):
    np.testing.assert_allclose(g_once, g_all, rtol=2e-4, atol=1e-5)


@pytest.mark.slow
def test_sharded_encode_is_exact_and_compiles_once_whether_or_not_the_batch_fits():
  result = subprocess.run([sys.executable, __file__], env=helpers.child_env(cpu_devices=4),
                          cwd=helpers.REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  assert "sharded distinct encode matches, compiled once" in result.stdout


def _sharded_check():
  """value_and_grad under jit, the batch sharded over 4 devices: a batch whose distinct images
  fit and one whose do not, through one compiled program, against every row encoded."""
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 4, mesh
  replicated, batch = sharding.shardings(mesh)
  rng = np.random.default_rng(0)
  num_episodes, memory_size, size, capacity_u = 8, 3, 26, 24
  pool_IxHxW = (rng.random((32, size, size)) < 0.3).astype(np.float32)
  model = vma_model.VMA(latent_dim=8, embed_dim=16, match_dim=16)
  key = jax.random.key(0)
  keys_BxK = vma_model.sample_keys(jax.random.split(key, num_episodes), 0, 2)
  params = jax.jit(model.init)(key, pool_IxHxW[:num_episodes], pool_IxHxW[:num_episodes, None].repeat(
      memory_size, axis=1), keys_BxK)

  def loss(params, x_BxHxW, memory_BxTxHxW, rows):
    encoding = model.apply(params, x_BxHxW, memory_BxTxHxW, embed_slots=False, distinct=rows,
                           method="encode")
    weights = model.apply(params, x_BxHxW, encoding, keys_BxK,
                          method="log_weights")
    return jnp.sum(weights.log_w_BxK)

  grad_fn = jax.jit(jax.value_and_grad(loss), in_shardings=(replicated, batch, batch, batch))
  grad_all_fn = jax.jit(lambda params, x, memory: jax.value_and_grad(loss)(params, x, memory,
                                                                           None),
                        in_shardings=(replicated, batch, batch))
  num_rows = num_episodes * (1 + memory_size)
  # 8 distinct images (room for them all), then 28 (more than the 24 rows). The 32 - 24 rows
  # left without one run h inside a conditional, which XLA:CPU runs slowly: few of them.
  for num_ids in (8, 28):
    ids_N = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, num_rows - num_ids)])
    index_Bx1T = rng.permutation(ids_N).reshape(num_episodes, 1 + memory_size)
    x_BxHxW, memory_BxTxHxW = pool_IxHxW[index_Bx1T[:, 0]], pool_IxHxW[index_Bx1T[:, 1:]]
    rows = distinct.find(vma_model.stack_rows(index_Bx1T[:, 0], index_Bx1T[:, 1:]), capacity_u)
    assert bool(distinct.fits(rows)) == (num_ids <= capacity_u)
    value, grads = grad_fn(params, x_BxHxW, memory_BxTxHxW, rows)
    value_all, grads_all = grad_all_fn(params, x_BxHxW, memory_BxTxHxW)
    np.testing.assert_allclose(value, value_all, rtol=1e-5)
    for g, g_all in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_all)):
      np.testing.assert_allclose(g, g_all, rtol=2e-4, atol=1e-5)
  assert grad_fn._cache_size() == 1  # pylint: disable=protected-access
  print("sharded distinct encode matches, compiled once")


if __name__ == "__main__":
  _sharded_check()
