"""The timed workloads: the jitted training step and the large-K evaluation bound.

Inputs are random binary images of the right shapes, placed on the device once (no dataset is
read). Each workload returns a `Workload`: a zero-argument function that runs one timed call
and blocks until its result is ready, the model FLOPs of that call, and the compiled
executable for XLA's own cost and memory analyses.
"""

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from benchmarks import flops as flops_lib
from configs import default as default_config
from vma_jax import model as vma_model
from vma_jax import objective


@dataclasses.dataclass
class Workload:
  run: Callable[[], Any]  # one timed call, blocking
  model_flops: float  # FLOPs counted by hand (benchmarks/flops.py)
  compiled: Any  # jax.stages.Compiled of the timed function
  step_fn: str  # which step is timed


def _config(batch, memory, samples, dtype):
  config = default_config.get_config()
  config.train.batch_size = batch
  config.episodes.memory_size = memory
  config.objective.num_samples = samples
  config.model.dtype = dtype
  return config


def _episodes(key, batch, memory, image_size):
  """Random binary episodes: an `episodes.Episodes` (labels: target class 0, memory 0 or 1)."""
  from vma_jax import episodes as episodes_lib  # pylint: disable=g-import-not-at-top
  kx, km = jax.random.split(key)
  x_BxHxW = jax.random.bernoulli(kx, 0.2, (batch, image_size, image_size)).astype(jnp.float32)
  memory_BxTxHxW = jax.random.bernoulli(
      km, 0.2, (batch, memory, image_size, image_size)).astype(jnp.float32)
  return episodes_lib.Episodes(
      x_BxHxW=x_BxHxW, memory_BxTxHxW=memory_BxTxHxW,
      x_label_B=jnp.zeros((batch,), jnp.int32),
      memory_labels_BxT=(jnp.arange(batch * memory, dtype=jnp.int32) % 2).reshape(batch, memory),
      x_index_B=jnp.arange(batch, dtype=jnp.int32))


def _local_train_step(config):
  """The training step built from the public pieces: used until vma_jax.train provides one."""
  vma = vma_model.make_model(config)
  optimizer = optax.adam(config.optim.lr, b1=config.optim.b1, b2=config.optim.b2,
                         eps=config.optim.eps)
  num_samples = config.objective.num_samples

  def init(key, x_BxHxW, memory_BxTxHxW, *unused_labels):
    keys = vma_model.sample_keys(jax.random.split(key, x_BxHxW.shape[0]), 0, num_samples)
    params = vma.init(key, x_BxHxW, memory_BxTxHxW, keys)
    return params, optimizer.init(params)

  def train_step(state, episodes, key):
    params, opt_state = state
    x_BxHxW, memory_BxTxHxW = episodes.x_BxHxW, episodes.memory_BxTxHxW
    keys_BxK = vma_model.sample_keys(jax.random.split(key, x_BxHxW.shape[0]), 0, num_samples)

    def loss_fn(params):
      lw = vma.apply(params, x_BxHxW, memory_BxTxHxW, keys_BxK)
      bound_B = objective.vimco_surrogate(lw.log_w_BxK, lw.log_q_a_BxK,
                                          config.objective.baseline)
      return -jnp.mean(bound_B)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), {"loss": loss}

  return init, jax.jit(train_step, donate_argnums=0)


def _project_train_step(config):
  """vma_jax.train's own step, if the module provides it; None otherwise."""
  try:
    from vma_jax import train  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  if not (hasattr(train, "make_train_step") and hasattr(train, "create_train_state")):
    return None
  return train


def train_workload(batch, memory, samples, dtype="float32", seed=0, step_impl="auto"):
  """One jitted training step (forward, VIMCO gradient, Adam update) with donated state."""
  config = _config(batch, memory, samples, dtype)
  key = jax.random.key(seed)
  episodes = jax.device_put(_episodes(key, batch, memory, config.data.image_size))
  train = _project_train_step(config) if step_impl in ("auto", "project") else None
  if step_impl == "project" and train is None:
    raise RuntimeError("vma_jax.train.make_train_step is not available")

  if train is not None:
    state = train.create_train_state(config, key)
    step = train.make_train_step(config)
    step_fn = "vma_jax.train.make_train_step"
  else:
    init, step = _local_train_step(config)
    state = init(key, *episodes)
    step_fn = "benchmarks.workloads._local_train_step"

  compiled = step.lower(state, episodes, key).compile()
  holder = {"state": state, "i": 0}

  def run():
    holder["i"] += 1
    state, metrics = step(holder["state"], episodes, jax.random.fold_in(key, holder["i"]))
    holder["state"] = state
    jax.block_until_ready((state, metrics))

  return Workload(run, flops_lib.train_step_flops(batch, memory, samples), compiled, step_fn)


def eval_workload(targets, memory, samples, chunk_size=None, dtype="float32", seed=0):
  """The streaming L_K bound of `targets` episodes, K = samples, in chunks of samples."""
  config = _config(targets, memory, samples, dtype)
  if chunk_size is None:
    chunk_size = config.eval.chunk_size
  vma = vma_model.make_model(config)
  key = jax.random.key(seed)
  episodes = jax.device_put(_episodes(key, targets, memory, config.data.image_size))
  x_BxHxW, memory_BxTxHxW = episodes.x_BxHxW, episodes.memory_BxTxHxW
  keys = vma_model.sample_keys(jax.random.split(key, targets), 0, 2)
  params = vma.init(key, x_BxHxW, memory_BxTxHxW, keys)
  episode_keys_B = jax.random.split(jax.random.fold_in(key, 1), targets)

  @jax.jit
  def bound(params, x_BxHxW, memory_BxTxHxW, episode_keys_B):
    return objective.streaming_bound(vma.apply, params, x_BxHxW, memory_BxTxHxW,
                                     episode_keys_B, num_samples=samples,
                                     chunk_size=chunk_size)

  args = (params, x_BxHxW, memory_BxTxHxW, episode_keys_B)
  compiled = bound.lower(*args).compile()

  def run():
    jax.block_until_ready(bound(*args))

  num_chunks = math.ceil(samples / min(chunk_size, samples))
  padded = num_chunks * min(chunk_size, samples)
  model_flops = flops_lib.forward_flops(targets, memory, padded)
  return Workload(run, model_flops, compiled, "objective.streaming_bound")


def matmul_workload(n=2048, dtype="float32"):
  """An n x n x n matrix product: the roofline reference of the same run."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  f = jax.jit(jnp.matmul)
  compiled = f.lower(a, b).compile()

  def run():
    jax.block_until_ready(f(a, b))

  return Workload(run, 2.0 * n**3, compiled, "jnp.matmul")
