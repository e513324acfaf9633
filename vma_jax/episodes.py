"""Few-shot episodes sampled on the device: a jitted map from a key to a batch.

An episode is a target image `x` and a memory of T other images of the same split. The
whole split lives on the device as `EpisodeData` (images grouped by class); the samplers
are pure functions of (data, key), jitted with static sizes.

Public API:

  EpisodeData.from_split(split) -> EpisodeData    the split on the device, by class
  device_data(split, mesh) -> EpisodeData         the same, replicated over a device mesh
  target_indices(num_images, num_targets)         the targets of an evaluation, spread evenly
  Episodes                                        x_BxHxW, memory_BxTxHxW (float32 in
                                                  {0, 1}), x_label_B, memory_labels_BxT,
                                                  x_index_B, memory_index_BxT (flat
                                                  indices in the split), distinct
  sample_train_episodes(data, key, *, batch_size, memory_size, per_class)
      Training (reproduction recipe): random targets; memory of exactly `per_class`
      images from each of T / per_class classes: the target's class plus others drawn
      without replacement. The target itself is never in memory.
  sample_cell_episodes(data, key, target_index_B, *, max_classes, memory_size)
      Evaluation cell (C, T): the number of classes c ~ U(1..min(C, T)); the T slots are
      split into c positive parts, uniformly over the compositions of T (so for c = 2
      the target's class gets r ~ U(1..T-1)); the first part comes from the target's
      class, each other part from a different other class. The episode of target i
      depends only on fold_in(key, i), so it does not depend on the batch it is in.
  sample_cell_train_episodes(data, key, *, batch_size, max_classes, memory_size)
      Random targets with the cell's composition.
  sample_distractor_episodes(data, key, target_index_B, *, same_class, memory_size)
      Large memories, cell R/T: R images of the target's class and T - R distractors drawn
      uniformly without replacement from all images of the other classes (so a memory of
      T = 1000 holds images of about 500 of the test split's 659 classes). Target i uses
      fold_in(key, i), as for the cells above.

In every episode the memory slots are in random order, and `memory_size = 0` gives an
empty memory (shape Bx0xHxW). Impossible settings raise errors.ConfigError at trace time.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vma_jax import distinct as distinct_lib
from vma_jax import errors
from vma_jax import sharding


class EpisodeData(NamedTuple):
  """One split on the device, grouped by class (L classes of P images each).

  Attributes:
    images_LxPxHxW: uint8 in {0, 1}, ink = 1; class c is the split's label c.
    index_LxP: int32 flat index in the split of each image.
    class_N: int32 class of each flat index.
    slot_N: int32 position within its class of each flat index.
  """

  images_LxPxHxW: jax.Array
  index_LxP: jax.Array
  class_N: jax.Array
  slot_N: jax.Array

  @classmethod
  def from_split(cls, split, device=None) -> EpisodeData:
    """Puts an `OmniglotSplit` (or anything with images_NxHxW, labels_N) on the device.

    Labels must be 0..C-1 with the same number of images in every class.
    """
    images_NxHxW = np.asarray(split.images_NxHxW)
    labels_N = np.asarray(split.labels_N)
    counts_C = np.bincount(labels_N)
    if counts_C.size == 0 or counts_C.min() != counts_C.max():
      uneven = {int(c): int(n) for c, n in enumerate(counts_C) if n != counts_C.max()}
      raise ValueError(
          "Episodes need every class 0..C-1 to have the same number of images; class"
          f" counts range over {counts_C.min() if counts_C.size else 0}.."
          f"{counts_C.max() if counts_C.size else 0} (e.g. {dict(list(uneven.items())[:5])})."
      )
    num_classes, per_class = counts_C.size, int(counts_C[0])
    order_N = np.argsort(labels_N, kind="stable")
    class_N = np.empty_like(labels_N, dtype=np.int32)
    slot_N = np.empty_like(labels_N, dtype=np.int32)
    class_N[order_N] = np.repeat(np.arange(num_classes), per_class)
    slot_N[order_N] = np.tile(np.arange(per_class), num_classes)
    h, w = images_NxHxW.shape[1:]
    arrays = cls(
        images_LxPxHxW=images_NxHxW[order_N].reshape(num_classes, per_class, h, w).astype(np.uint8),
        index_LxP=order_N.reshape(num_classes, per_class).astype(np.int32),
        class_N=class_N,
        slot_N=slot_N,
    )
    return jax.device_put(arrays, device)

  @property
  def num_classes(self) -> int:
    return self.images_LxPxHxW.shape[0]

  @property
  def per_class(self) -> int:
    return self.images_LxPxHxW.shape[1]

  @property
  def num_images(self) -> int:
    return self.class_N.shape[0]


def device_data(split, mesh) -> EpisodeData:
  """The split's images and labels, replicated on every device of `mesh`, for episodes to be
  drawn on the devices (training and evaluation alike). Each process copies them onto its own
  devices of the mesh."""
  return sharding.replicate(jax.device_get(EpisodeData.from_split(split)), mesh)


def target_indices(num_images: int, num_targets: int) -> np.ndarray:
  """All targets (num_targets <= 0), or num_targets of them spread evenly over the split.

  The split is ordered by class, so an evenly spread subset covers the classes evenly.
  """
  if num_targets <= 0 or num_targets >= num_images:
    return np.arange(num_images, dtype=np.int32)
  return (np.arange(num_targets, dtype=np.int64) * num_images // num_targets).astype(np.int32)


class Episodes(NamedTuple):
  """A batch of B episodes with memories of T images."""

  x_BxHxW: jax.Array  # float32 in {0, 1}
  memory_BxTxHxW: jax.Array  # float32 in {0, 1}
  x_label_B: jax.Array  # int32 class of the target
  memory_labels_BxT: jax.Array  # int32 class of each memory slot
  x_index_B: jax.Array  # int32 flat index of the target in the split
  memory_index_BxT: jax.Array  # int32 flat index of each memory slot in the split
  # The batch's distinct images (training adds them, see `vma_jax.distinct`), or None.
  distinct: distinct_lib.DistinctRows | None = None


# ----------------------------------------------------------------------------------------
# One episode; the batch samplers vmap these over per-episode keys.


def _random_subset(key, n: int, k: int, exclude) -> jax.Array:
  """k distinct indices of 0..n-1 other than `exclude`, uniformly, in random order."""
  u_N = jax.random.uniform(key, (n,))
  u_N = jnp.where(jnp.arange(n) == exclude, jnp.inf, u_N)
  return jax.lax.top_k(-u_N, k)[1]  # the k smallest keys


def _gather(data: EpisodeData, c_x, p_x, class_T, slot_T, key) -> Episodes:
  # Shuffle the slots so that position in memory says nothing about the class.
  perm_T = jax.random.permutation(key, class_T.shape[0])
  class_T, slot_T = class_T[perm_T], slot_T[perm_T]
  return Episodes(
      x_BxHxW=data.images_LxPxHxW[c_x, p_x].astype(jnp.float32),
      memory_BxTxHxW=data.images_LxPxHxW[class_T, slot_T].astype(jnp.float32),
      x_label_B=c_x.astype(jnp.int32),
      memory_labels_BxT=class_T.astype(jnp.int32),
      x_index_B=data.index_LxP[c_x, p_x],
      memory_index_BxT=data.index_LxP[class_T, slot_T],
  )


def _empty_memory(data: EpisodeData, target) -> Episodes:
  c_x, p_x = data.class_N[target], data.slot_N[target]
  h, w = data.images_LxPxHxW.shape[2:]
  return Episodes(
      x_BxHxW=data.images_LxPxHxW[c_x, p_x].astype(jnp.float32),
      memory_BxTxHxW=jnp.zeros((0, h, w), jnp.float32),
      x_label_B=c_x,
      memory_labels_BxT=jnp.zeros((0,), jnp.int32),
      x_index_B=data.index_LxP[c_x, p_x],
      memory_index_BxT=jnp.zeros((0,), jnp.int32),
  )


def _train_episode(data: EpisodeData, key, target, *, memory_size: int, per_class: int):
  """Target's class plus T/P-1 other classes, exactly P = per_class images each."""
  if memory_size == 0:
    return _empty_memory(data, target)
  num_classes, images_per_class = data.images_LxPxHxW.shape[:2]
  k = memory_size // per_class
  key_classes, key_slots, key_perm = jax.random.split(key, 3)
  c_x, p_x = data.class_N[target], data.slot_N[target]
  others = _random_subset(key_classes, num_classes, k - 1, c_x)
  memory_classes = jnp.concatenate([c_x[None], others])
  # per_class distinct images of each class; the target is excluded from its own class.
  priority = jax.random.uniform(key_slots, (k, images_per_class))
  priority = priority.at[0, p_x].set(jnp.inf)
  slots_per_class = jax.lax.top_k(-priority, per_class)[1]
  class_T = jnp.repeat(memory_classes, per_class)
  return _gather(data, c_x, p_x, class_T, slots_per_class.reshape(-1), key_perm)


def _cell_episode(data: EpisodeData, key, target, *, max_classes: int, memory_size: int):
  """c ~ U(1..min(C, T)) classes; T split uniformly into c positive parts."""
  if memory_size == 0:
    return _empty_memory(data, target)
  num_classes, images_per_class = data.images_LxPxHxW.shape[:2]
  t = memory_size
  m = min(max_classes, t)  # most classes an episode can have
  key_c, key_cuts, key_classes, key_slots, key_perm = jax.random.split(key, 5)
  c_x, p_x = data.class_N[target], data.slot_N[target]
  c = jax.random.randint(key_c, (), 1, m + 1)
  # A composition of T into c positive parts is a (c-1)-subset of the cut points 1..T-1.
  # Draw m-1 distinct cuts in random order and keep the first c-1 (the others move to T,
  # giving empty parts): the kept ones are a uniform (c-1)-subset.
  cuts = _random_subset(key_cuts, t, m - 1, 0)  # distinct, in 1..T-1
  cuts = jnp.sort(jnp.where(jnp.arange(m - 1) < c - 1, cuts, t))
  part_starts = jnp.concatenate([jnp.zeros((1,), cuts.dtype), cuts])
  s_T = jnp.arange(t)
  part_T = jnp.sum(cuts[None, :] <= s_T[:, None], axis=1)  # part 0: target's class
  rank_T = s_T - part_starts[part_T]  # index of the slot within its part
  others = _random_subset(key_classes, num_classes, m - 1, c_x)
  memory_classes = jnp.concatenate([c_x[None], others])
  # A random order of each class's images with the target last in its own class; parts
  # take a prefix, and no part is longer than P - 1 (checked), so the target never comes.
  priority = jax.random.uniform(key_slots, (m, images_per_class))
  priority = priority.at[0, p_x].set(jnp.inf)
  order = jnp.argsort(priority, axis=1)
  return _gather(data, c_x, p_x, memory_classes[part_T], order[part_T, rank_T], key_perm)


def _distractor_episode(data: EpisodeData, key, target, *, same_class: int, memory_size: int):
  """R = same_class images of the target's class, T - R uniformly from the other classes."""
  images_per_class = data.images_LxPxHxW.shape[1]
  key_same, key_other, key_perm = jax.random.split(key, 3)
  c_x, p_x = data.class_N[target], data.slot_N[target]
  same_R = _random_subset(key_same, images_per_class, same_class, p_x)
  # Uniform keys over every image, the target's class ruled out: the T - R smallest are a
  # uniform subset of the other classes' images.
  u_N = jnp.where(data.class_N == c_x, jnp.inf,
                  jax.random.uniform(key_other, (data.num_images,)))
  other_V = jax.lax.top_k(-u_N, memory_size - same_class)[1]
  class_T = jnp.concatenate([jnp.full((same_class,), c_x, jnp.int32), data.class_N[other_V]])
  slot_T = jnp.concatenate([same_R.astype(jnp.int32), data.slot_N[other_V]])
  return _gather(data, c_x, p_x, class_T, slot_T, key_perm)


# ----------------------------------------------------------------------------------------
# Checks at trace time (static sizes only).


def _check_train(data: EpisodeData, batch_size, memory_size, per_class):
  num_classes, images_per_class = data.images_LxPxHxW.shape[:2]
  if batch_size < 1 or memory_size < 0:
    raise errors.ConfigError(
        f"need batch_size >= 1 and memory_size >= 0, got {batch_size}, {memory_size}")
  if memory_size == 0:
    return
  if per_class < 1 or memory_size % per_class:
    raise errors.ConfigError(
        f"memory_size={memory_size} must be a multiple of per_class={per_class} >= 1"
    )
  if per_class > images_per_class - 1:
    raise errors.ConfigError(
        f"per_class={per_class} is impossible: the target's class has only"
        f" {images_per_class - 1} images besides the target"
    )
  if memory_size // per_class > num_classes:
    raise errors.ConfigError(
        f"memory_size / per_class = {memory_size // per_class} classes, but the split has"
        f" only {num_classes}"
    )


def _check_cell(data: EpisodeData, max_classes, memory_size):
  num_classes, images_per_class = data.images_LxPxHxW.shape[:2]
  if max_classes < 1 or memory_size < 0:
    raise errors.ConfigError(
        f"need max_classes >= 1 and memory_size >= 0, got {max_classes}, {memory_size}"
    )
  if memory_size > images_per_class - 1:
    raise errors.ConfigError(
        f"cell (C={max_classes}, T={memory_size}) is impossible: with c = 1 all T memory"
        f" images come from the target's class, which has only {images_per_class - 1}"
        " images besides the target"
    )
  if min(max_classes, memory_size) > num_classes:
    raise errors.ConfigError(
        f"cell (C={max_classes}, T={memory_size}) needs {min(max_classes, memory_size)}"
        f" classes, but the split has only {num_classes}"
    )


def _check_distractors(data: EpisodeData, same_class, memory_size):
  num_classes, images_per_class = data.images_LxPxHxW.shape[:2]
  if not 1 <= same_class <= memory_size:
    raise errors.ConfigError(
        f"cell {same_class}/{memory_size} is impossible: R/T needs 1 <= R <= T")
  if same_class > images_per_class - 1:
    raise errors.ConfigError(
        f"cell {same_class}/{memory_size} is impossible: the target's class has only"
        f" {images_per_class - 1} images besides the target")
  others = (num_classes - 1) * images_per_class
  if memory_size - same_class > others:
    raise errors.ConfigError(
        f"cell {same_class}/{memory_size} needs {memory_size - same_class} images of other"
        f" classes, but the split has only {others}")


# ----------------------------------------------------------------------------------------
# Batch samplers.


@functools.partial(jax.jit, static_argnames=("batch_size", "memory_size", "per_class"))
def sample_train_episodes(
    data: EpisodeData, key: jax.Array, *, batch_size: int, memory_size: int, per_class: int
) -> Episodes:
  """B episodes with uniform targets and the recipe's memory (per_class per class)."""
  _check_train(data, batch_size, memory_size, per_class)
  key_targets, key_episodes = jax.random.split(key)
  target_B = jax.random.randint(key_targets, (batch_size,), 0, data.num_images)
  episode = functools.partial(_train_episode, memory_size=memory_size, per_class=per_class)
  keys_B = jax.random.split(key_episodes, batch_size)
  return jax.vmap(episode, in_axes=(None, 0, 0))(data, keys_B, target_B)


@functools.partial(jax.jit, static_argnames=("max_classes", "memory_size"))
def sample_cell_episodes(
    data: EpisodeData, key: jax.Array, target_index_B: jax.Array, *, max_classes: int,
    memory_size: int
) -> Episodes:
  """The cell (C, T) episodes of the given targets; target i uses fold_in(key, i)."""
  _check_cell(data, max_classes, memory_size)
  target_index_B = jnp.asarray(target_index_B, jnp.int32)
  keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, target_index_B)
  episode = functools.partial(_cell_episode, max_classes=max_classes, memory_size=memory_size)
  return jax.vmap(episode, in_axes=(None, 0, 0))(data, keys_B, target_index_B)


@functools.partial(jax.jit, static_argnames=("batch_size", "max_classes", "memory_size"))
def sample_cell_train_episodes(
    data: EpisodeData, key: jax.Array, *, batch_size: int, max_classes: int, memory_size: int
) -> Episodes:
  """B episodes with uniform targets and the cell (C, T) composition."""
  _check_cell(data, max_classes, memory_size)
  if batch_size < 1:
    raise errors.ConfigError(f"need batch_size >= 1, got {batch_size}")
  key_targets, key_episodes = jax.random.split(key)
  target_B = jax.random.randint(key_targets, (batch_size,), 0, data.num_images)
  episode = functools.partial(_cell_episode, max_classes=max_classes, memory_size=memory_size)
  keys_B = jax.random.split(key_episodes, batch_size)
  return jax.vmap(episode, in_axes=(None, 0, 0))(data, keys_B, target_B)


@functools.partial(jax.jit, static_argnames=("same_class", "memory_size"))
def sample_distractor_episodes(
    data: EpisodeData, key: jax.Array, target_index_B: jax.Array, *, same_class: int,
    memory_size: int
) -> Episodes:
  """The cell R/T episodes of the given targets (R = same_class); target i uses
  fold_in(key, i)."""
  _check_distractors(data, same_class, memory_size)
  target_index_B = jnp.asarray(target_index_B, jnp.int32)
  keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, target_index_B)
  episode = functools.partial(_distractor_episode, same_class=same_class,
                              memory_size=memory_size)
  return jax.vmap(episode, in_axes=(None, 0, 0))(data, keys_B, target_index_B)
