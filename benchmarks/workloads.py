"""The timed workloads: the jitted training step and the large-K evaluation bound.

Inputs are episodes of random binary images (a stand-in split of Omniglot's size), placed on
the device once (no dataset is read). Each workload returns a `Workload`: a zero-argument
function that runs one timed call and blocks until its result is ready, the model FLOPs of
that call, and the compiled executable for XLA's own cost and memory analyses.
"""

import dataclasses
import math
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flops as flops_lib
from configs import default as default_config
from vma_jax import model as vma_model


@dataclasses.dataclass
class Workload:
  run: Callable[[], Any]  # one timed call, blocking
  model_flops: float  # FLOPs counted by hand (benchmarks/flops.py)
  compiled: Any  # jax.stages.Compiled of the timed function
  step_fn: str  # which step is timed
  extra: dict = dataclasses.field(default_factory=dict)  # more fields for the entry


def _config(batch, memory, samples, dtype, cpu_kernels="auto"):
  config = default_config.get_config()
  config.model.cpu_kernels = cpu_kernels
  config.train.batch_size = batch
  config.episodes.memory_size = memory
  # The recipe's 4 images per class where 4 divides T (the cost does not depend on it).
  config.episodes.per_class = math.gcd(memory, config.episodes.per_class) or 1
  config.objective.num_importance = samples
  config.model.dtype = dtype
  return config


def _stand_in_data(key, num_classes, per_class, image_size):
  """A random binary stand-in for an Omniglot split, on the device, replicated."""
  from vma_jax import episodes as episodes_lib  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top
  images_NxHxW = jax.random.bernoulli(key, 0.2, (num_classes * per_class, image_size, image_size))
  split = types.SimpleNamespace(images_NxHxW=np.asarray(images_NxHxW, np.uint8),
                                labels_N=np.repeat(np.arange(num_classes), per_class))
  replicated, _ = sharding.shardings(sharding.make_mesh())
  return jax.device_put(episodes_lib.EpisodeData.from_split(split), replicated)


def train_workload(batch, memory, samples, dtype="float32", seed=0, num_classes=964,
                   per_class=20, cpu_kernels="auto"):
  """`vma_jax.train.make_train_step` (forward, VIMCO gradient, Adam, donated state).

  One batch of episodes drawn by `train.make_episode_sampler`, as in training, from a random
  binary stand-in for the background split (964 classes x 20 images): its images repeat as
  often as in training, and h runs once per distinct image where training does so.
  """
  from vma_jax import distinct  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top
  from vma_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from vma_jax import train  # pylint: disable=g-import-not-at-top
  config = _config(batch, memory, samples, dtype, cpu_kernels)
  key = jax.random.key(seed)
  mesh = sharding.make_mesh()
  data = _stand_in_data(key, num_classes, per_class, config.data.image_size)
  episodes, sample_key = train.make_episode_sampler(config, mesh)(data, key, np.int32(0))
  extra = dict(rows=batch * (1 + memory))
  match_rows = None  # h's rows: all of them, unless the train step runs it on the distinct ones
  if episodes.distinct is not None:
    extra.update(distinct_rows=episodes.distinct.row_U.shape[0],
                 num_distinct=int(distinct.num_distinct(episodes.distinct)))
    if distinct.fits(episodes.distinct):
      match_rows = extra["distinct_rows"]
  state = state_lib.init_train_state(config, key, mesh)
  step = train.make_train_step(config, mesh=mesh)
  compiled = step.lower(state, episodes, sample_key).compile()
  holder = {"state": state, "i": 0}

  def run():
    holder["i"] += 1
    state, metrics = step(holder["state"], episodes, jax.random.fold_in(sample_key, holder["i"]))
    holder["state"] = state
    jax.block_until_ready((state, metrics))

  return Workload(run, flops_lib.train_step_flops(batch, memory, samples, match_rows=match_rows),
                  compiled, "vma_jax.train.make_train_step", extra)


def eval_workload(targets, memory, samples, chunk_size=None, dtype="float32", seed=0,
                  cell=None, num_classes=659, per_class=20, cpu_kernels="auto"):
  """`vma_jax.cells.make_cell_fn`: L_K of `targets` episodes of `cell` (default C:T = 2:T;
  the cost depends only on T), K samples.

  The episodes are drawn from a random binary stand-in for the test split (659 classes x 20
  images), on the device; targets are sharded over all local devices as in evaluation.
  """
  from vma_jax import cells  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top
  config = _config(targets, memory, samples, dtype, cpu_kernels)
  chunk_size = config.eval.chunk_size if chunk_size is None else chunk_size
  size = config.data.image_size
  key = jax.random.key(seed)
  data = _stand_in_data(key, num_classes, per_class, size)
  mesh = sharding.make_mesh()
  replicated, batch_sharding = sharding.shardings(mesh)
  vma = vma_model.make_model(config)
  # Jitted: one compile, not one per layer's operation (hundreds, eagerly).
  params = jax.jit(vma.init)(key, jnp.zeros((1, size, size)), jnp.zeros((1, memory, size, size)),
                             vma_model.sample_keys(jax.random.split(key, 1), 0, 2))
  params = jax.device_put(params, replicated)
  cell = cells.Cell(2, memory) if cell is None else cell
  bound = cells.make_cell_fn(vma, cell, num_importance=samples, chunk_size=chunk_size,
                             mesh=mesh)
  targets_B = jax.device_put(jnp.arange(targets, dtype=jnp.int32), batch_sharding)
  cell_key = cells.cell_key(seed, cell)
  args = (params, data, cell_key, targets_B)
  compiled = bound.lower(*args).compile()

  def run():
    jax.block_until_ready(bound(*args))

  num_chunks = math.ceil(samples / min(chunk_size, samples))
  padded = num_chunks * min(chunk_size, samples)
  model_flops = flops_lib.forward_flops(targets, memory, padded)
  return Workload(run, model_flops, compiled, "vma_jax.cells.make_cell_fn",
                  dict(cell=str(cell)))


def matmul_workload(n=2048, dtype="float32"):
  """An n x n x n matrix product: the roofline reference of the same run."""
  a = jnp.ones((n, n), dtype)
  b = jnp.ones((n, n), dtype)
  f = jax.jit(jnp.matmul)
  compiled = f.lower(a, b).compile()

  def run():
    jax.block_until_ready(f(a, b))

  return Workload(run, 2.0 * n**3, compiled, "jnp.matmul")
