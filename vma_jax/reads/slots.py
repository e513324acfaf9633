"""A memory with D learned dummy slots, encoded once: what the hard, soft and no reads share.

Slots 0 .. T-1 are the memory's images, slots T .. T+D-1 the dummies: learned parameters of
the shape of an image, zero at first, the same for every episode. `encode` runs h on x and on
every slot (the dummies once per batch, not per episode; with `distinct`, once per distinct
image of the batch, see `vma_jax.distinct`) and, with `embed_slots`, e and the decoder's skip
terms on every slot too; without, `sampled` computes them for the sampled slots only.

Shape letters: `vma_jax.reads.base`'s; S = T + D here.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vma_jax import distinct as distinct_lib
from vma_jax.reads import base


def dummies(read: base.Read):
  """The read's D dummy slots (a parameter "dummies", initialised to 0): call in `setup`."""
  return read.param("dummies", nn.initializers.zeros,
                    (read.num_dummies, read.image_size, read.image_size))


class SlotEncoding(NamedTuple):
  """e and the decoder's skip terms of every slot. Dummies carry no batch axis.

  The terms are `Decoder.project_skips` of the slot's skips: the skips themselves on stock
  layers, their terms in the merge layers on the CPU layers (`cpu.layers.SkipTerms`).
  """

  e_memory_BxTxE: jax.Array  # e(m_i), memory slots
  terms_memory: Any  # skip terms of m_i, each BxTx...
  e_dummy_DxE: jax.Array  # e(dummy_d)
  terms_dummy: Any  # each Dx...


class Encoded(NamedTuple):
  """e(x), h of x and of every slot, and (with `embed_slots`) e and skip terms of every slot."""

  e_x_BxE: jax.Array
  h_x_BxA: jax.Array  # float32
  h_memory_BxTxA: jax.Array
  h_dummy_DxA: jax.Array
  slots: SlotEncoding | None  # None: `sampled` encodes the sampled slots


def encode(read: base.Read, dummies_DxHxW, x_BxHxW, memory_BxTxHxW, embed_slots: bool = True,
           distinct: distinct_lib.DistinctRows | None = None) -> Encoded:
  """Each image through each encoder at most once (`vma_jax.reads.slots`)."""
  batch, memory_size = memory_BxTxHxW.shape[:2]
  if x_BxHxW.shape[-2:] != (read.image_size,) * 2:
    raise ValueError(f"expected {read.image_size}x{read.image_size} images, "
                     f"got x of shape {x_BxHxW.shape}")
  # One encoder call for targets and memory items together: bigger, better-shaped convs.
  images_NxHxW = base.stack_rows(x_BxHxW, memory_BxTxHxW)
  per_episode = lambda v_N: v_N.reshape((batch, 1 + memory_size) + v_N.shape[1:])
  h_NxA = _match_rows(read, images_NxHxW, distinct)
  h_dummy_DxA, _ = read.match(dummies_DxHxW)
  if embed_slots:
    e_NxE, skips_N = read.embed(images_NxHxW)
    e_x_BxE = per_episode(e_NxE)[:, 0]
    slots = _slot_encoding(read, dummies_DxHxW, per_episode(e_NxE)[:, 1:], skips_N)
  else:
    (e_x_BxE, _), slots = read.embed(x_BxHxW), None
  return Encoded(e_x_BxE=e_x_BxE, h_x_BxA=per_episode(h_NxA)[:, 0].astype(jnp.float32),
                 h_memory_BxTxA=per_episode(h_NxA)[:, 1:], h_dummy_DxA=h_dummy_DxA,
                 slots=slots)


def address_logits(encoded: Encoded):
  """<h(x), h(m_i)> for every slot i: logits_BxS, memory slots first."""
  logits_memory_BxT = jnp.einsum(
      "ba,bta->bt", encoded.h_x_BxA, encoded.h_memory_BxTxA.astype(jnp.float32))
  logits_dummy_BxD = jnp.einsum(
      "ba,da->bd", encoded.h_x_BxA, encoded.h_dummy_DxA.astype(jnp.float32))
  return jnp.concatenate([logits_memory_BxT, logits_dummy_BxD], axis=1)


def sampled(read: base.Read, dummies_DxHxW, memory_BxTxHxW, slots: SlotEncoding | None, a_BxK):
  """e(m_{a_k}) and the skip terms of m_{a_k}: gathered from `slots`, or computed if None."""
  if slots is not None:
    gather = lambda memory, dummy: base.gather_slots(memory, dummy, a_BxK)
    return (gather(slots.e_memory_BxTxE, slots.e_dummy_DxE),
            jax.tree.map(gather, slots.terms_memory, slots.terms_dummy))
  images_BxKxHxW = base.gather_slots(memory_BxTxHxW, dummies_DxHxW, a_BxK)
  e_NxE, skips_N = read.embed(images_BxKxHxW.reshape((-1,) + images_BxKxHxW.shape[2:]))
  unflatten = lambda v: v.reshape(a_BxK.shape + v.shape[1:])
  return unflatten(e_NxE), jax.tree.map(unflatten, read.decoder.project_skips(skips_N))


def _match_rows(read: base.Read, images_NxHxW, distinct: distinct_lib.DistinctRows | None):
  """h of every row; with `distinct`, computed once per distinct image where they fit."""
  if distinct is None:
    return read.match(images_NxHxW)[0]
  # h of the U distinct rows, gathered back to the N rows. The V rows whose image got none
  # (a batch with more than U distinct images, rare) take h computed in a cond, decided on
  # the device: one program for every batch. Only those rows run inside the cond (XLA:CPU
  # runs convs slower in a conditional), V = N - U at most (each of the U images has a
  # row), recomputed for the gradient (a cond keeps the residuals of both branches).
  num_rows, capacity_u = distinct.inverse_N.shape[0], distinct.row_U.shape[0]
  h_UxA, _ = read.match(images_NxHxW[distinct.row_U])
  has_row_N = distinct.inverse_N < capacity_u
  h_NxA = h_UxA[jnp.where(has_row_N, distinct.inverse_N, 0)]
  num_rest = num_rows - capacity_u
  if num_rest <= 0:
    return h_NxA
  (rest_V,) = jnp.nonzero(~has_row_N, size=num_rest, fill_value=0)
  no_rest = lambda read, images_NxHxW, rest_V: jnp.zeros(
      (num_rest,) + h_UxA.shape[1:], h_UxA.dtype)
  rest = nn.remat(lambda read, images_NxHxW, rest_V: read.match(images_NxHxW[rest_V])[0])
  h_rest_VxA = nn.cond(distinct_lib.fits(distinct), no_rest, rest, read, images_NxHxW, rest_V)
  rest_of_N = jnp.clip(jnp.cumsum(~has_row_N) - 1, 0, num_rest - 1)
  return jnp.where(has_row_N[:, None], h_NxA, h_rest_VxA[rest_of_N])


def _slot_encoding(read: base.Read, dummies_DxHxW, e_memory_BxTxE, skips_N) -> SlotEncoding:
  """e and the skip terms of every slot, from the encoder's outputs on the N = B(1+T) rows
  (targets first in each episode, `base.stack_rows`) and on the dummies."""
  batch, memory_size = e_memory_BxTxE.shape[:2]
  memory_rows = lambda v_N: v_N.reshape((batch, 1 + memory_size) + v_N.shape[1:])[:, 1:]
  flatten = lambda v_BxTx: v_BxTx.reshape((-1,) + v_BxTx.shape[2:])
  as_memory = lambda v_BTx: v_BTx.reshape((batch, memory_size) + v_BTx.shape[1:])
  e_dummy_DxE, skips_dummy = read.embed(dummies_DxHxW)
  terms_BT = read.decoder.project_skips(
      jax.tree.map(lambda v: flatten(memory_rows(v)), skips_N))
  return SlotEncoding(
      e_memory_BxTxE=e_memory_BxTxE,
      terms_memory=jax.tree.map(as_memory, terms_BT),
      e_dummy_DxE=e_dummy_DxE,
      terms_dummy=read.decoder.project_skips(skips_dummy))
