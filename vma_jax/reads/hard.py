"""The hard read: the VMA's discrete, stochastic address a over the memory and D dummy slots.

For an episode (x, M) with memory M = (m_1 ... m_T) and D learned dummy slots appended
(S = T + D slots in all, `vma_jax.reads.slots`):

  generative model   p(a) = Uniform(S)
                     p(z | m_a) = N(mu_p(e(m_a)), sigma_p(e(m_a)))
                     p(x | z, m_a) = Bernoulli(dec([z, g(e(m_a))], skips(m_a)))
  posterior          q(a | x, M) = softmax_i <h(x), h(m_i)>
                     q(z | x, m_a) = N(mu_q([e(x), e(m_a)]), sigma_q([e(x), e(m_a)]))

and each of K samples (a_k, z_k) ~ q carries the log-weight

  log w_k = log p(x|z_k,m_{a_k}) + log p(z_k|m_{a_k}) + log p(a_k)
            - log q(z_k|x,m_{a_k}) - log q(a_k|x,M).

Cost: h runs once per slot (q(a|x,M) needs them all). e, and the skips' terms in the
decoder, are needed only for the sampled slots: with K >= T samples (evaluation) `encode`
computes them once per slot and `log_weights` gathers them, with K < T (training: K = 4,
T = 32) `log_weights` computes them for the K sampled slots only (`base.embed_every_slot`).
The decoder runs once per sample. The functions take the read and its dummies, so that the
plain VAE (`vma_jax.reads.none`) is this read on the dummies alone.

Shape letters: `vma_jax.reads.base`'s; S = T + D here.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vma_jax import distributions
from vma_jax.reads import base
from vma_jax.reads import slots as slots_lib


class Encoding(NamedTuple):
  """What the hard read needs of (x, M), computed once and shared by all K samples."""

  e_x_BxE: jax.Array  # e(x)
  address_logits_BxS: jax.Array  # <h(x), h(m_i)> for every slot i, memory slots first
  memory_BxTxHxW: jax.Array  # M itself, for encoding only the sampled slots
  slots: slots_lib.SlotEncoding | None  # every slot's encoding, or None: the sampled ones


def encode(read: base.Read, dummies_DxHxW, x_BxHxW, memory_BxTxHxW, embed_slots=True,
           distinct=None) -> Encoding:
  """e(x), q(a|x,M)'s logits and (with `embed_slots`) e and skip terms of every slot."""
  encoded = slots_lib.encode(read, dummies_DxHxW, x_BxHxW, memory_BxTxHxW, embed_slots,
                             distinct)
  return Encoding(e_x_BxE=encoded.e_x_BxE, address_logits_BxS=slots_lib.address_logits(encoded),
                  memory_BxTxHxW=memory_BxTxHxW, slots=encoded.slots)


def log_weights(read: base.Read, dummies_DxHxW, x_BxHxW, encoding: Encoding,
                keys_BxK) -> base.LogWeights:
  """Draws a_k ~ q(a|x,M), z_k ~ q(z|x,m_{a_k}) from keys_BxK and scores them."""
  key_a_BxK, key_z_BxK = base.split2(keys_BxK)
  log_q_all_BxS = distributions.categorical_log_probs(encoding.address_logits_BxS)
  # Over episodes, then over samples sharing their episode's logits (no BxKxS copy).
  a_BxK = jax.vmap(jax.vmap(jax.random.categorical, in_axes=(0, None)))(
      key_a_BxK, log_q_all_BxS).astype(jnp.int32)
  log_q_a_BxK = jnp.take_along_axis(log_q_all_BxS, a_BxK, axis=1)

  e_m_BxKxE, terms_BxK = slots_lib.sampled(read, dummies_DxHxW, encoding.memory_BxTxHxW,
                                           encoding.slots, a_BxK)
  e_x_BxKxE = jnp.broadcast_to(encoding.e_x_BxE[:, None], e_m_BxKxE.shape)
  q_mean_BxKxZ, q_std_BxKxZ = read.gaussian(
      read.posterior_mean, read.posterior_scale, jnp.concatenate([e_x_BxKxE, e_m_BxKxE], -1))
  p_mean_BxKxZ, p_std_BxKxZ = read.gaussian(read.prior_mean, read.prior_scale, e_m_BxKxE)

  z_BxKxZ = q_mean_BxKxZ + q_std_BxKxZ * base.normal(key_z_BxK, read.latent_dim)
  log_qz_BxK = distributions.gaussian_log_prob(z_BxKxZ, q_mean_BxKxZ, q_std_BxKxZ)
  log_pz_BxK = distributions.gaussian_log_prob(z_BxKxZ, p_mean_BxKxZ, p_std_BxKxZ)

  logits_BxKxHxW = read.decode(z_BxKxZ, e_m_BxKxE, terms_BxK)
  log_px_BxK = distributions.bernoulli_log_prob(x_BxHxW[:, None], logits_BxKxHxW)
  log_pa = -math.log(log_q_all_BxS.shape[-1])
  return base.LogWeights(
      log_w_BxK=log_px_BxK + log_pz_BxK + log_pa - log_qz_BxK - log_q_a_BxK,
      log_px_BxK=log_px_BxK, kl_z_BxK=log_qz_BxK - log_pz_BxK, logits_BxKxHxW=logits_BxKxHxW,
      log_q_a_BxK=log_q_a_BxK, a_BxK=a_BxK)


def generate(read: base.Read, dummies_DxHxW, memory_BxTxHxW, key, num_samples, x_BxHxW=None):
  """Bernoulli means of x ~ p(x | z, m_a), z ~ p(z | m_a), with a ~ p(a), or a ~ q(a|x,M)
  given x: BxKxHxW."""
  slot_key, z_key = jax.random.split(key)
  batch, memory_size = memory_BxTxHxW.shape[:2]
  if x_BxHxW is None:
    a_BxK = jax.random.randint(slot_key, (batch, num_samples), 0,
                               memory_size + dummies_DxHxW.shape[0])
  else:
    logits_BxS = encode(read, dummies_DxHxW, x_BxHxW, memory_BxTxHxW,
                        embed_slots=False).address_logits_BxS
    a_BxK = jax.random.categorical(slot_key, logits_BxS[:, None, :], shape=(batch, num_samples))
  e_m_BxKxE, terms_BxK = slots_lib.sampled(read, dummies_DxHxW, memory_BxTxHxW, None, a_BxK)
  p_mean_BxKxZ, p_std_BxKxZ = read.gaussian(read.prior_mean, read.prior_scale, e_m_BxKxE)
  z_BxKxZ = distributions.gaussian_sample(z_key, p_mean_BxKxZ, p_std_BxKxZ)
  return jax.nn.sigmoid(read.decode(z_BxKxZ, e_m_BxKxE, terms_BxK))


def address(encoding: Encoding) -> base.Address:
  """q(a|x,M) over the episode's memory slots, then the dummies."""
  return base.Address(encoding.address_logits_BxS, encoding.memory_BxTxHxW.shape[1])


@base.register("hard")
class VMA(base.Read):
  """The VMA model. Sizes default to the reference (1,118,409 parameters for 26x26 images)."""

  def setup(self):
    super().setup()
    self.dummies_DxHxW = slots_lib.dummies(self)

  def encode(self, x_BxHxW, memory_BxTxHxW, embed_slots=True, distinct=None) -> Encoding:
    return encode(self, self.dummies_DxHxW, x_BxHxW, memory_BxTxHxW, embed_slots, distinct)

  def log_weights(self, x_BxHxW, encoding: Encoding, keys_BxK) -> base.LogWeights:
    return log_weights(self, self.dummies_DxHxW, x_BxHxW, encoding, keys_BxK)

  def generate(self, memory_BxTxHxW, key, num_samples, x_BxHxW=None):
    return generate(self, self.dummies_DxHxW, memory_BxTxHxW, key, num_samples, x_BxHxW)

  def address(self, encoding: Encoding) -> base.Address:
    return address(encoding)

  def learned_slots(self):
    return self.dummies_DxHxW
