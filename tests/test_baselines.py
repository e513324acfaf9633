"""The baselines of configs/baseline_*.py: a plain VAE (no memory) and soft attention.

What makes each what it claims to be: the plain VAE's log-weights do not depend on the memory
and are the VMA's with an empty one; the soft read has no address variable (no score term),
is the same function of the memory in any slot order, and trains through L_K; both train,
resume and evaluate through the same commands as the VMA.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import mock_splits
from helpers import small_config
from vma_jax import cells
from vma_jax import checkpoints
from vma_jax import episodes
from vma_jax import evaluate
from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax import sharding
from vma_jax import state as state_lib
from vma_jax import train


def _config(memory_read, **overrides):
  config = small_config(**overrides)
  config.model.memory_read = memory_read
  return config


def _episodes(batch=3, memory_size=5, num_importance=4, seed=0):
  rng = np.random.default_rng(seed)
  x_BxHxW = (rng.random((batch, 26, 26)) < 0.2).astype(np.float32)
  memory_BxTxHxW = (rng.random((batch, memory_size, 26, 26)) < 0.2).astype(np.float32)
  keys_BxK = vma_model.sample_keys(jax.random.split(jax.random.key(seed), batch), 0,
                                   num_importance)
  return x_BxHxW, memory_BxTxHxW, keys_BxK


def test_memory_read_names_the_model_class():
  assert type(vma_model.make_model(_config("hard"))) is vma_model.VMA
  assert type(vma_model.make_model(_config("none"))) is vma_model.PlainVAE
  assert type(vma_model.make_model(_config("soft"))) is vma_model.SoftAttentionVAE
  with pytest.raises(ValueError, match="memory_read 'sof'.*hard, soft, none"):
    vma_model.make_model(_config("sof"))


def test_plain_vae_ignores_the_memory_and_is_the_vma_with_an_empty_one():
  config = _config("none")
  vae, vma = vma_model.make_model(config), vma_model.make_model(_config("hard"))
  params = vma_model.init_params(config, jax.random.key(0))
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes()
  # Jitted (here and below): one compile each, not one per operation of the model.
  with_memory = jax.jit(vae.apply)(params, x_BxHxW, memory_BxTxHxW, keys_BxK)
  other_memory = jax.jit(vae.apply)(params, x_BxHxW, 1.0 - memory_BxTxHxW, keys_BxK)
  empty = jax.jit(vma.apply)(params, x_BxHxW, memory_BxTxHxW[:, :0], keys_BxK)
  np.testing.assert_array_equal(with_memory.log_w_BxK, other_memory.log_w_BxK)
  np.testing.assert_allclose(with_memory.log_w_BxK, empty.log_w_BxK, rtol=1e-6)
  assert int(jnp.max(with_memory.a_BxK)) < config.model.num_dummies  # dummies only


def test_soft_read_has_no_address_variable_and_ignores_the_slot_order():
  config = _config("soft")
  model = vma_model.make_model(config)
  params = vma_model.init_params(config, jax.random.key(1))
  assert "query" in params["params"] and "prior_mean" not in params["params"]  # p(z) = N(0, I)
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes()
  apply = jax.jit(model.apply)
  weights = apply(params, x_BxHxW, memory_BxTxHxW, keys_BxK)
  assert weights.log_q_a_BxK is None and weights.a_BxK is None  # no score term
  np.testing.assert_allclose(weights.log_w_BxK,
                             weights.log_px_BxK - weights.kl_z_BxK, rtol=1e-6)
  shuffled = apply(params, x_BxHxW, memory_BxTxHxW[:, ::-1], keys_BxK)
  np.testing.assert_allclose(shuffled.log_w_BxK, weights.log_w_BxK, rtol=1e-5)
  # The memory does enter: another memory, other log-weights.
  other = apply(params, x_BxHxW, 1.0 - memory_BxTxHxW, keys_BxK)
  assert np.max(np.abs(np.asarray(other.log_w_BxK - weights.log_w_BxK))) > 1e-3


def test_soft_read_is_the_same_function_on_the_cpu_layers_and_stock_layers():
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(batch=2, memory_size=3)
  log_w = {}
  for cpu_kernels in ("on", "off"):
    config = _config("soft", model__cpu_kernels=cpu_kernels)
    params = vma_model.init_params(_config("soft"), jax.random.key(2))
    log_w[cpu_kernels] = jax.jit(vma_model.make_model(config).apply)(
        params, x_BxHxW, memory_BxTxHxW, keys_BxK).log_w_BxK
  np.testing.assert_allclose(log_w["on"], log_w["off"], rtol=1e-5)


def test_soft_attention_trains_through_l_k():
  """The loss is -L_K (the surrogate adds nothing) and its gradient reaches h and the query."""
  config = _config("soft")
  model = vma_model.make_model(config)
  params = vma_model.init_params(config, jax.random.key(3))
  data = episodes.EpisodeData.from_split(mock_splits()["train"])
  batch = episodes.sample_train_episodes(data, jax.random.key(4), batch_size=4, memory_size=4,
                                         per_class=2)
  (loss, (_, weights)), grads = jax.jit(jax.value_and_grad(
      objective.make_loss_fn(config, model), has_aux=True))(params, batch, jax.random.key(5))
  np.testing.assert_allclose(loss, -jnp.mean(objective.iw_bound(weights.log_w_BxK)), rtol=1e-6)
  for name in ("query", "match", "embed", "decoder"):
    norm = float(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads["params"][name])))
    assert norm > 0.0, name


@pytest.mark.slow
def test_soft_attention_trains_and_evaluates(tmp_path):
  """train_and_evaluate as for the VMA, then evaluation cells C:T and R/T."""
  config = _config("soft", train__num_steps=2)
  train.train_and_evaluate(config, str(tmp_path), splits=mock_splits())
  params, step, saved = checkpoints.restore_params(str(tmp_path))
  assert step == 2 and saved.model.memory_read == "soft"
  [result] = evaluate.evaluate_grid(
      vma_model.make_model(saved), params, mock_splits()["test"], cells.parse_cells("2/6"),
      num_importance=4, num_targets=8, batch_size=4, chunk_size=2, seed=0)
  assert np.isfinite(result.bound) and 100 < result.bound < 1000


@pytest.mark.slow
def test_plain_vae_trains_without_memory_and_evaluates_on_any_cell():
  """configs/baseline_vae.py trains on T = 0; its cells, any T, have all q(a) on dummies."""
  config = _config("none")
  config.episodes.memory_size = 0
  mesh = sharding.make_mesh()
  data = episodes.device_data(mock_splits()["train"], mesh)
  state = state_lib.init_train_state(config, jax.random.key(6), mesh)
  batch, sample_key = train.make_episode_sampler(config, mesh)(data, jax.random.key(7),
                                                                np.int32(0))
  assert batch.memory_BxTxHxW.shape[1] == 0
  state, metrics = train.make_train_step(config, mesh=mesh)(state, batch, sample_key)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["frac_dummy"]) == 1.0
  results = evaluate.evaluate_grid(
      vma_model.make_model(config), state.params, mock_splits()["test"],
      cells.parse_cells("1:0,2/6"), num_importance=4, num_targets=8, batch_size=4,
      chunk_size=2, seed=0)
  for r in results:
    assert np.isfinite(r.bound) and r.mass_dummy == pytest.approx(1.0)
    assert r.mass_target_class == 0.0
