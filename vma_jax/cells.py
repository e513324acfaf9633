"""Few-shot evaluation cells: L_K of each target's episode for large K, and where q(a|x,M)
puts its mass.

A cell C:T of Table 1 has episodes whose memory holds T images from at most C classes
(`vma_jax.episodes.sample_cell_episodes`); a large-memory cell R/T holds R images of the
target's class among T, the others drawn uniformly from the other classes
(`sample_distractor_episodes`). Here each target's L_K is computed on its episode
with `objective.streaming_bound`, in chunks of samples, beside a summary of its address
posterior (`objective.address_summary`, for a read that has one), and read back batch by
batch. Training's validation and `vma_jax.evaluate` both use these functions.

Episodes and samples depend only on (key, C, T, target index), never on the batch size, the
chunking or the devices, so a figure is reproducible on any device count, and the bounds of
two computation dtypes on one checkpoint differ by the precision alone.
"""

from __future__ import annotations

import math
import time
from typing import NamedTuple

import jax
import numpy as np

from vma_jax import batches
from vma_jax import episodes as vma_episodes
from vma_jax import errors
from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax import sharding

# Rows (targets and memory images) of one batch of a Table 1 cell: a cell with larger
# memories takes fewer targets at once (`targets_per_batch`), so that its peak memory does not
# grow with T.
_ROWS_PER_TARGET = 1 + 19


class Cell(NamedTuple):
  """An evaluation cell: C:T (Table 1: at most C classes, `same_class` = 0) or R/T (R =
  `same_class` images of the target's class among T, `max_classes` = 0)."""

  max_classes: int
  memory_size: int
  same_class: int = 0

  def __str__(self) -> str:
    if self.same_class:
      return f"{self.same_class}/{self.memory_size}"
    return f"{self.max_classes}:{self.memory_size}"


_CELL_SYNTAX = ("cells are written C:T (Table 1: T images from at most C classes) or R/T "
                "(R images of the target's class among T), e.g. '1:5,2:19,5/1000'")


def parse_cell(item: str) -> Cell:
  """'2:19' -> Cell(2, 19); '5/1000' -> Cell(0, 1000, same_class=5); '1:0': an empty memory."""
  separator = "/" if "/" in item else ":"
  try:
    first, memory_size = (int(v) for v in item.split(separator))
  except ValueError:
    raise errors.ConfigError(f"bad cell {item!r}: {_CELL_SYNTAX}") from None
  if separator == "/":
    if not 1 <= first <= memory_size:
      raise errors.ConfigError(f"bad cell {item!r}: R/T needs 1 <= R <= T")
    return Cell(0, memory_size, same_class=first)
  if first < 1 or memory_size < 0:
    raise errors.ConfigError(f"bad cell {item!r}: C:T needs C >= 1 and T >= 0")
  return Cell(first, memory_size)


def parse_cells(cells: str) -> list[Cell]:
  """'1:1,2:19,5/1000' -> [Cell(1, 1), Cell(2, 19), Cell(0, 1000, same_class=5)]."""
  parsed = [parse_cell(item) for item in cells.replace(" ", "").split(",") if item]
  if not parsed:
    raise errors.ConfigError(f"no cells in {cells!r}: {_CELL_SYNTAX}")
  return parsed


def targets_per_batch(batch_size: int, memory_size: int, num_devices: int = 1) -> int:
  """The targets a batch of cell T holds: `batch_size` up to T = 19, fewer beyond (a multiple
  of `num_devices`, at least one per device), so that a batch never holds many more images
  than one of `batch_size` targets at T = 19."""
  if memory_size + 1 <= _ROWS_PER_TARGET:
    return batch_size
  fitting = batch_size * _ROWS_PER_TARGET // (memory_size + 1)
  return max(num_devices, fitting // num_devices * num_devices)


def sample_episodes(data, key, target_index_B, cell: Cell) -> vma_episodes.Episodes:
  """The episodes of `cell` for the given targets (target i from fold_in(key, i))."""
  if cell.same_class:
    return vma_episodes.sample_distractor_episodes(
        data, key, target_index_B, same_class=cell.same_class, memory_size=cell.memory_size)
  return vma_episodes.sample_cell_episodes(
      data, key, target_index_B, max_classes=cell.max_classes, memory_size=cell.memory_size)


def make_cell_fn(model: vma_model.Read, cell: Cell, *, num_importance: int, chunk_size: int,
                 mesh=None):
  """A jitted `(params, data, key, target_index_B) -> {name: value per target}` on the
  episodes of `cell`: "bound" (L_K) and, for a read with an address, the
  `objective.address_summary` of each target's episode.

  The episode of target i and its K samples depend only on (key, i). Targets (and their
  values) are sharded over `mesh` (default: every process's devices); params and data are
  replicated. `cell_values` feeds it and reads the values back. With K >= T every slot is
  encoded once; with fewer samples than slots only the sampled ones, chunk by chunk, so that
  the peak memory stays that of one chunk (`vma_model.embed_every_slot`).
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  replicated, batch = sharding.shardings(mesh)
  embed_slots = vma_model.embed_every_slot(cell.memory_size, num_importance)

  def cell_fn(params, data, key, target_index_B):
    episode_key, sample_key = jax.random.split(key)
    episodes = sample_episodes(data, episode_key, target_index_B, cell)
    sample_keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(sample_key, target_index_B)
    encoding = model.apply(params, episodes.x_BxHxW, episodes.memory_BxTxHxW,
                           embed_slots=embed_slots, method="encode")
    bound_B = objective.streaming_bound(
        model.apply, params, episodes.x_BxHxW, episodes.memory_BxTxHxW, sample_keys_B,
        num_importance=num_importance, chunk_size=chunk_size, encoding=encoding)
    address = model.apply(params, encoding, method="address")
    if address is None:
      return {"bound": bound_B}
    return {"bound": bound_B, **objective.address_summary(
        address, episodes.memory_labels_BxT, episodes.x_label_B)}

  return jax.jit(cell_fn, in_shardings=(replicated, replicated, replicated, batch),
                 out_shardings=batch)


def cell_values(cell_fn, params, data, key, targets_N: np.ndarray, batch_size: int, *,
                mesh=None, log_every_s: float = 60.0, name: str = "") -> dict[str, np.ndarray]:
  """`cell_fn`'s values of every target in targets_N ({name: float64, shape N}), in batches of
  batch_size (`batches.in_batches`: the last one padded, a log line every `log_every_s`
  seconds prefixed `name`). With `mesh`, the one `cell_fn` shards the targets over."""
  values = batches.in_batches(lambda target_index_B: cell_fn(params, data, key, target_index_B),
                              targets_N, batch_size, mesh=mesh, name=name,
                              log_every_s=log_every_s)
  return {k: v.astype(np.float64) for k, v in values.items()}


def cell_key(seed: int, cell: Cell) -> jax.Array:
  """The key of a cell: its episodes and samples do not depend on which other cells run."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), cell.max_classes),
                           cell.memory_size)
  return jax.random.fold_in(key, cell.same_class) if cell.same_class else key


def evaluate_targets(model: vma_model.Read, params, data, cell: Cell, *, num_importance: int,
                     targets: np.ndarray, batch_size: int, chunk_size: int, seed: int,
                     mesh=None) -> tuple[dict[str, np.ndarray], float]:
  """`make_cell_fn`'s values of every target in `targets` on `cell`, with "neg_bound"
  (-L_K, nats) in place of "bound"; and the seconds taken, compiling included.

  Up to T = 19, `batch_size` targets go at once; larger memories take fewer
  (`targets_per_batch`), which changes no value.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_size(batch_size, mesh)
  batch_size = targets_per_batch(batch_size, cell.memory_size, mesh.size)
  cell_fn = make_cell_fn(model, cell, num_importance=num_importance, chunk_size=chunk_size,
                         mesh=mesh)
  start_time = time.perf_counter()
  values = cell_values(cell_fn, params, data, cell_key(seed, cell), targets, batch_size,
                       mesh=mesh, name=f"cell {cell}: ")
  seconds = time.perf_counter() - start_time
  values["neg_bound"] = -values.pop("bound")
  if not np.all(np.isfinite(values["neg_bound"])):
    raise FloatingPointError(
        f"non-finite bound in cell {cell}: the checkpoint's parameters may be corrupt")
  return values, seconds


def mean_and_stderr(values_N: np.ndarray) -> tuple[float, float]:
  """The mean of values_N and its standard error (NaN for a single value)."""
  num = len(values_N)
  stderr = float(values_N.std(ddof=1) / math.sqrt(num)) if num > 1 else float("nan")
  return float(values_N.mean()), stderr


def on_devices(split, num_targets: int):
  """(mesh over every process's devices, the split's images replicated on it, the targets):
  what a grid of cells on `split` needs."""
  mesh = sharding.make_mesh()
  return (mesh, vma_episodes.device_data(split, mesh),
          vma_episodes.target_indices(len(split.labels_N), num_targets))
