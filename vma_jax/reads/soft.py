"""The soft read: the memory read by soft attention, a deterministic mixture of every slot.

No address variable. With w_i(u) = softmax_i <u, h(m_i)> over the S = T + D slots (the D
dummies of `vma_jax.reads.slots` included) and a read r(u) = sum_i w_i(u) [e(m_i), skips(m_i)]
(the embedding and the skip connections mixed alike):

  p(z) = N(0, I)
  p(x | z, M) = Bernoulli(dec([z, g(r_e(k(z)))], r_skips(k(z))))   k: a learned query
  q(z | x, M) = N(mu_q([e(x), r_e(h(x))]), sigma_q([e(x), r_e(h(x))]))

and log w_k = log p(x|z_k,M) + log p(z_k) - log q(z_k|x,M). Every sample reads all S slots:
the decoder's inputs cost O(K S) per episode, against O(K) for the hard address. The
generative model reads M through z alone, so L_K bounds log p(x | M). Trained with L_K (its
gradient: no score-function term); configs/baseline_soft.py.

Shape letters: `vma_jax.reads.base`'s; S = T + D here.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vma_jax import distributions
from vma_jax import initializers
from vma_jax.reads import base
from vma_jax.reads import slots as slots_lib


class Encoding(NamedTuple):
  """What the soft read needs of (x, M): e(x), h and e of every slot."""

  e_x_BxE: jax.Array  # e(x)
  attention_x_BxS: jax.Array  # <h(x), h(m_i)> for every slot i: the logits of w(h(x))
  h_memory_BxTxA: jax.Array  # h(m_i), for the queries k(z)
  h_dummy_DxA: jax.Array  # h(dummy_d)
  slots: slots_lib.SlotEncoding


@base.register("soft")
class SoftAttentionVAE(base.Read):
  """Soft attention over the memory and the dummies (the module's docstring)."""

  def setup(self):
    super().setup()
    self.dummies_DxHxW = slots_lib.dummies(self)
    self.query = nn.Dense(self.match_dim, dtype=jnp.dtype(self.dtype), name="query",
                          **initializers.layer_kwargs(self.param_init, self.latent_dim))

  def encode(self, x_BxHxW, memory_BxTxHxW, embed_slots=True, distinct=None) -> Encoding:
    del embed_slots  # every sample reads every slot: all are encoded
    encoded = slots_lib.encode(self, self.dummies_DxHxW, x_BxHxW, memory_BxTxHxW, True,
                               distinct)
    return Encoding(e_x_BxE=encoded.e_x_BxE, attention_x_BxS=slots_lib.address_logits(encoded),
                    h_memory_BxTxA=encoded.h_memory_BxTxA, h_dummy_DxA=encoded.h_dummy_DxA,
                    slots=encoded.slots)

  def _read(self, w_BxKxS, slots: slots_lib.SlotEncoding):
    """sum_i w_i [e(m_i), skip terms of m_i] (the terms are linear in the skips, and the
    weights sum to one, so mixing terms mixes the skips)."""
    batch = w_BxKxS.shape[0]
    with_dummies = lambda memory_BxTx, dummy_Dx: jnp.concatenate(
        [memory_BxTx, jnp.broadcast_to(dummy_Dx, (batch,) + dummy_Dx.shape)], axis=1)
    mix = lambda v_BxSx: jnp.einsum("bks,bs...->bk...", w_BxKxS.astype(v_BxSx.dtype), v_BxSx)
    e_BxKxE = mix(with_dummies(slots.e_memory_BxTxE, slots.e_dummy_DxE))
    terms_BxK = jax.tree.map(lambda m, d: mix(with_dummies(m, d)), slots.terms_memory,
                             slots.terms_dummy)
    return e_BxKxE, terms_BxK

  def _query_weights(self, z_BxKxZ, encoding: Encoding):
    """w(k(z)) over the S slots, per sample."""
    batch = z_BxKxZ.shape[0]
    h_BxSxA = jnp.concatenate(
        [encoding.h_memory_BxTxA, jnp.broadcast_to(
            encoding.h_dummy_DxA, (batch,) + encoding.h_dummy_DxA.shape)], axis=1)
    u_BxKxA = self.query(z_BxKxZ).astype(jnp.float32)
    return jax.nn.softmax(jnp.einsum("bka,bsa->bks", u_BxKxA, h_BxSxA.astype(jnp.float32)), -1)

  def log_weights(self, x_BxHxW, encoding: Encoding, keys_BxK) -> base.LogWeights:
    """z_k ~ q(z|x,M) from keys_BxK, scored under p(z) p(x|z,M)."""
    w_x_Bx1xS = jax.nn.softmax(encoding.attention_x_BxS.astype(jnp.float32), -1)[:, None]
    e_read_x_BxE = self._read(w_x_Bx1xS, encoding.slots)[0][:, 0]
    q_mean_BxZ, q_std_BxZ = self.gaussian(
        self.posterior_mean, self.posterior_scale,
        jnp.concatenate([encoding.e_x_BxE, e_read_x_BxE.astype(encoding.e_x_BxE.dtype)], -1))
    eps_BxKxZ = base.normal(keys_BxK, self.latent_dim)
    z_BxKxZ = q_mean_BxZ[:, None] + q_std_BxZ[:, None] * eps_BxKxZ
    log_qz_BxK = distributions.gaussian_log_prob(z_BxKxZ, q_mean_BxZ[:, None],
                                                 q_std_BxZ[:, None])
    log_pz_BxK = distributions.gaussian_log_prob(z_BxKxZ, 0.0, 1.0)
    e_m_BxKxE, terms_BxK = self._read(self._query_weights(z_BxKxZ, encoding), encoding.slots)
    logits_BxKxHxW = self.decode(z_BxKxZ, e_m_BxKxE, terms_BxK)
    log_px_BxK = distributions.bernoulli_log_prob(x_BxHxW[:, None], logits_BxKxHxW)
    return base.LogWeights(
        log_w_BxK=log_px_BxK + log_pz_BxK - log_qz_BxK, log_px_BxK=log_px_BxK,
        kl_z_BxK=log_qz_BxK - log_pz_BxK, logits_BxKxHxW=logits_BxKxHxW)

  def generate(self, memory_BxTxHxW, key, num_samples, x_BxHxW=None):
    """Bernoulli means of x ~ p(x | z, M), z ~ p(z), whether x is given or not (the read is
    the attention's of z)."""
    batch, size = memory_BxTxHxW.shape[0], memory_BxTxHxW.shape[-1]
    encoding = self.encode(jnp.zeros((batch, size, size), memory_BxTxHxW.dtype), memory_BxTxHxW)
    z_BxKxZ = jax.random.normal(key, (batch, num_samples, self.latent_dim))
    e_m_BxKxE, terms_BxK = self._read(self._query_weights(z_BxKxZ, encoding), encoding.slots)
    return jax.nn.sigmoid(self.decode(z_BxKxZ, e_m_BxKxE, terms_BxK))

  def learned_slots(self):
    return self.dummies_DxHxW
