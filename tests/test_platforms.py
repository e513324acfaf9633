"""The train step and the evaluation bound lower for GPU and TPU, without those devices.

What users run there is the program lowered for `cuda` or `tpu` (StableHLO, before the
compiler): these tests build it on CPU and check that it lowers, and that it has none of the
CPU-only gradient paths of `vma_jax.cpu.convolution` (the kernel gradients' loops over chunks of
pixels).
"""

import functools
import re

import jax
import numpy as np
import pytest

from helpers import mock_splits, small_config
from vma_jax import cells
from vma_jax.cpu import convolution
from vma_jax import episodes as episodes_lib
from vma_jax import model as vma_model
from vma_jax import sharding
from vma_jax import state as state_lib
from vma_jax import train

ACCELERATORS = ("cuda", "rocm", "tpu")


def _ops(stablehlo: str) -> dict[str, int]:
  """How many times each op of interest occurs in a lowered program."""
  return {op: len(re.findall(rf"stablehlo\.{op}\b", stablehlo))
          for op in ("while", "convolution")}


@pytest.fixture(scope="module")
def lowered_train_step():
  """platform -> ops of the train step, every conv of the small model above `_MIN_ROWS`."""
  config = small_config()
  mesh = sharding.make_mesh()
  data = episodes_lib.EpisodeData.from_split(mock_splits()["train"])
  state = state_lib.init_train_state(config, jax.random.key(0), mesh)
  episodes, key = train.make_episode_sampler(config, mesh)(data, jax.random.key(1), np.int32(0))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(convolution, "_MIN_ROWS", 0)  # the CPU paths wherever they could apply
    traced = train.make_train_step(config, mesh=mesh).trace(state, episodes, key)
    return {platform: _ops(traced.lower(lowering_platforms=(platform,)).as_text())
            for platform in ("cpu", *ACCELERATORS)}


def test_train_step_takes_the_cpu_gradient_paths_on_cpu(lowered_train_step):
  """The reference point of the next test: on CPU the kernel gradients are loops."""
  assert lowered_train_step["cpu"]["while"] > 0


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_train_step_on_accelerators_keeps_xlas_gradients(lowered_train_step, platform):
  ops = lowered_train_step[platform]
  assert ops["while"] == 0, ops  # no kernel-gradient loop
  assert ops["convolution"] > 0, ops


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_evaluation_bound_lowers_for_accelerators(platform):
  """The large-K bound (chunks of samples in a loop) as evaluate.py runs it."""
  config = small_config()
  vma = vma_model.make_model(config)
  memory = 3
  key = jax.random.key(0)
  # Shapes are enough to lower the bound: nothing is computed.
  params = jax.eval_shape(functools.partial(vma_model.init_params, config), key)
  data = episodes_lib.EpisodeData.from_split(mock_splits()["test"])
  cell = cells.Cell(2, memory)
  bound_fn = cells.make_cell_fn(vma, cell, num_importance=6, chunk_size=2)
  targets_B = np.arange(jax.device_count(), dtype=np.int32)
  lowered = bound_fn.trace(params, data, cells.cell_key(0, cell), targets_B).lower(
      lowering_platforms=(platform,)).as_text()
  ops = _ops(lowered)
  assert ops["while"] == 1, ops  # the loop over the chunks of samples, nothing more
