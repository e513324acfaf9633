"""What a training run watches on held-out episodes, at the periods of config.train:

  valid/neg_bound     -L_K of config.validation's cell (C classes, T memory slots) on its
                      targets, with the means of the address summary (valid/address_kl, ...);
  few_shot grid       images/few_shot_<step>.png: for 8 targets their memory, x, the image of
                      argmax_a q(a|x,M) and the read's generations given x.
"""

from __future__ import annotations

import time

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh
import numpy as np

from vma_jax import cells
from vma_jax import episodes as episodes_lib
from vma_jax import figures
from vma_jax import model as vma_model
from vma_jax import run as run_lib
from vma_jax.reads import base as reads_base

NUM_IMAGE_TARGETS = 8


def make_image_fn(config, model: vma_model.Read, num_generated: int = 8):
  """Jitted `images(params, data, target_index_B, key) -> (memory, x, retrieved, samples)`.

  For cell episodes of config.validation: the image of the slot argmax_a q(a|x,M) (a learned
  slot shows its image; None for a read without an address), and the read's `generate`
  given x (for the VMA: means of p(x|z,m_a) with a ~ q(a|x,M), z ~ p(z|m_a)).
  """
  v = config.validation

  def images(params, data, target_index_B, key):
    episode_key, generate_key = jax.random.split(key)
    episodes = episodes_lib.sample_cell_episodes(
        data, episode_key, target_index_B, max_classes=v.max_classes,
        memory_size=v.memory_size)
    x_BxHxW, memory_BxTxHxW = episodes.x_BxHxW, episodes.memory_BxTxHxW
    encoding = model.apply(params, x_BxHxW, memory_BxTxHxW, embed_slots=False,
                           method="encode")  # only the address is used
    address = model.apply(params, encoding, method="address")
    retrieved_BxHxW = None if address is None else reads_base.retrieved_images(
        address, memory_BxTxHxW, model.apply(params, method="learned_slots"))
    samples_BxKxHxW = model.apply(params, memory_BxTxHxW, generate_key, num_generated,
                                  x_BxHxW, method="generate")
    return memory_BxTxHxW, x_BxHxW, retrieved_BxHxW, samples_BxKxHxW

  return jax.jit(images)


class Validation:
  """The validation bound and the image grid of one run: their jitted functions, targets
  (spread evenly over the test split) and keys, fixed for the whole run so that every step's
  figures are comparable."""

  def __init__(self, config, model: vma_model.Read, mesh: Mesh,
               test_data: episodes_lib.EpisodeData, valid_key, image_key):
    v = self.config = config.validation
    self.mesh, self.test_data = mesh, test_data
    self.valid_key, self.image_key = valid_key, image_key
    self.bound_fn = cells.make_cell_fn(model, cells.Cell(v.max_classes, v.memory_size),
                                       num_importance=v.num_importance,
                                       chunk_size=v.chunk_size, mesh=mesh)
    self.images_fn = make_image_fn(config, model)
    self.targets_N = episodes_lib.target_indices(test_data.num_images, v.num_targets)
    self.image_targets_B = episodes_lib.target_indices(test_data.num_images,
                                                       NUM_IMAGE_TARGETS)

  def trace(self, abstract_params, *, bound: bool, images: bool) -> None:
    """Traces the functions a run will call (a setting they refuse raises its ConfigError)."""
    if bound:
      jax.eval_shape(self.bound_fn, abstract_params, self.test_data, self.valid_key,
                     np.resize(self.targets_N, self.config.batch_size).astype(np.int32))
    if images:
      jax.eval_shape(self.images_fn, abstract_params, self.test_data, self.image_targets_B,
                     self.image_key)

  def write_bound(self, params, run: run_lib.Run, step: int) -> None:
    """Writes valid/neg_bound (-L_K), valid/seconds and the address summary's means."""
    v, start = self.config, time.monotonic()
    values = cells.cell_values(self.bound_fn, params, self.test_data, self.valid_key,
                               self.targets_N, v.batch_size, mesh=self.mesh)
    bound = float(np.mean(values.pop("bound")))
    run.scalars(step, {"valid/neg_bound": -bound, "valid/seconds": time.monotonic() - start,
                       **{f"valid/{k}": float(np.mean(x)) for k, x in values.items()}})
    logging.info("step %d: validation -L_%d = %.2f nats (cell C=%d, T=%d, %d targets)", step,
                 v.num_importance, -bound, v.max_classes, v.memory_size, len(self.targets_N))

  def write_images(self, params, run: run_lib.Run, step: int) -> None:
    """Writes the few-shot grid as images/few_shot_<step>.png (and an image summary)."""
    # Gathered by every process (the arrays may span other processes' devices).
    memory, x, retrieved, samples = multihost_utils.process_allgather(
        self.images_fn(params, self.test_data, self.image_targets_B, self.image_key),
        tiled=True)
    run.figure(step, "few_shot", figures.few_shot_grid(memory, x, retrieved, samples))
