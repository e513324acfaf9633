"""Repeated rows of a batch, found on the device: each distinct image is encoded once.

A training batch stacks N = B(1 + T) images drawn from one split, and the same image often
comes back: at the recipe's size (B = 256, T = 32, from the 19,280 images of the background
split) about 18% of the rows repeat an image already in the batch. The address encoder h is
a deterministic function of its image, so `VMA.encode` can run it on U distinct rows and
gather h back to all N: the same h, and (the gather's transpose adds up the repeats'
cotangents) the same gradient up to float rounding.

U must be static. `capacity` sizes it for the expected number of distinct images plus a
margin; `find` marks a batch with more distinct images than that (`fits` is False), and
`VMA.encode` then also runs h on the rows left without a distinct row, in a branch taken
inside the jitted step: one program for every batch, and no wait for the device. The result
never depends on U, only the time does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class DistinctRows(NamedTuple):
  """The distinct images of a batch of N rows, at most U of them.

  row_U[u] is a row holding distinct image u (padding: row 0), and inverse_N[n] the distinct
  image of row n, so that rows_NxF == rows_NxF[row_U][inverse_N] where `fits`.
  """

  row_U: jax.Array  # int32
  inverse_N: jax.Array  # int32 in [0, number of distinct ids); >= U where it does not fit


def expected_distinct(num_rows: int, num_images: int) -> float:
  """E[number of distinct images] among num_rows uniform draws, with replacement, from
  num_images: num_images * (1 - (1 - 1/num_images)^num_rows)."""
  return num_images * -math.expm1(num_rows * math.log1p(-1.0 / num_images))


def capacity(num_rows: int, num_images: int, multiple: int = 8) -> int:
  """U for a batch of num_rows images drawn from num_images: the expected number of distinct
  images plus 4 of its square roots, rounded up to `multiple`, and at most num_rows rounded
  up (where nothing would be saved, see `worthwhile`).

  Measured on Omniglot's background split, the count's standard deviation is 0.4 square
  roots for the recipe's batches (U is 10 of them above the mean) and 1.2-1.5 for cell
  batches with T = 19, whose memories hold up to a whole class (about 1% of C = 1 batches
  do not fit).
  """
  if num_rows <= 0 or num_images <= 0:
    raise ValueError(f"need num_rows, num_images >= 1, got {num_rows}, {num_images}")
  expected = expected_distinct(num_rows, num_images)
  size = min(math.ceil(expected + 4.0 * math.sqrt(expected)), num_rows)
  return -(-size // multiple) * multiple


def worthwhile(num_rows: int, capacity_u: int) -> bool:
  """Whether encoding U = capacity_u rows instead of num_rows saves at least 5% of them (below
  that the gathers and the static padding eat the gain)."""
  return capacity_u <= 0.95 * num_rows


def find(ids_N: jax.Array, capacity_u: int) -> DistinctRows:
  """The distinct values of ids_N (any int ids, e.g. indices in the split), at most U of them.

  Jittable; a sort of the N ids. Distinct ids are numbered in increasing order of id.
  """
  ids_N = jnp.asarray(ids_N)
  order_N = jnp.argsort(ids_N)
  sorted_N = ids_N[order_N]
  is_first_N = jnp.concatenate([jnp.ones((1,), bool), sorted_N[1:] != sorted_N[:-1]])
  rank_N = jnp.cumsum(is_first_N, dtype=jnp.int32) - 1  # distinct id of each sorted row
  inverse_N = jnp.zeros_like(rank_N).at[order_N].set(rank_N)
  # One row per distinct id (its first in sorted order); ids past U are dropped.
  slot_N = jnp.where(is_first_N, rank_N, capacity_u)
  row_U = jnp.zeros((capacity_u,), jnp.int32).at[slot_N].set(
      order_N.astype(jnp.int32), mode="drop")
  return DistinctRows(row_U=row_U, inverse_N=inverse_N)


def num_distinct(rows: DistinctRows) -> jax.Array:
  """The number of distinct ids in the batch (may exceed U)."""
  return jnp.max(rows.inverse_N) + 1


def fits(rows: DistinctRows) -> jax.Array:
  """Whether every distinct id got a row: a bool scalar, jittable (nothing waits for it)."""
  return num_distinct(rows) <= rows.row_U.shape[0]
