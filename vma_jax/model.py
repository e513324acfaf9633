"""The Variational Memory Addressing model: generative model, posterior and log-weights.

For an episode (x, M) with memory M = (m_1 ... m_T) and D learned dummy slots appended
(S = T + D slots in all):

  generative model   p(a) = Uniform(S)
                     p(z | m_a) = N(mu_p(e(m_a)), sigma_p(e(m_a)))
                     p(x | z, m_a) = Bernoulli(dec([z, g(e(m_a))], skips(m_a)))
  posterior          q(a | x, M) = softmax_i <h(x), h(m_i)>
                     q(z | x, m_a) = N(mu_q([e(x), e(m_a)]), sigma_q([e(x), e(m_a)]))

and each of K samples (a_k, z_k) ~ q carries the log-weight

  log w_k = log p(x|z_k,m_{a_k}) + log p(z_k|m_{a_k}) + log p(a_k)
            - log q(z_k|x,m_{a_k}) - log q(a_k|x,M).

Cost: `encode` runs h once per memory slot (the D dummy slots once per batch, not per episode,
and in training once per distinct image of the batch, see `vma_jax.distinct`):
q(a|x,M) needs h of every slot. e, and the skips' terms in the decoder, are needed only for
the sampled slots; with K >= T samples (evaluation) `encode` computes them once per slot and
`log_weights` gathers them, with K < T (training: K = 4, T = 32) `log_weights` computes them for
the K sampled slots only (`embed_every_slot`). The decoder runs once per sample. Samples are
drawn from explicit keys, one per (episode, sample), so that a bound computed in chunks of
samples draws exactly the samples of the unchunked one.

Shape letters: B episodes, T memory slots, D dummy slots, S = T + D, K samples per episode,
N rows of a flattened batch, U distinct images among them, HxW image, E = embed_dim (e),
A = match_dim (h), Z = latent_dim, I = the decoder's input width (z and g(e(m_a))).
"""

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vma_jax import distinct as distinct_lib
from vma_jax import distributions
from vma_jax import errors
from vma_jax import initializers
from vma_jax import networks
from vma_jax.cpu import layers as cpu_layers

# The revision of the function that `VMA`'s parameters compute. It goes up whenever that
# function changes without changing the parameters' shapes, so that a checkpoint of another
# revision is refused rather than evaluated as if it were this model (`vma_jax.checkpoints`).
REVISION = 2
REVISION_CHANGES = {
    2: "the decoder has no ReLU after its fc2 layer (docs/model.md, Networks); the default "
       "initialisation is PyTorch's (model.param_init = 'torch')",
}


CPU_KERNELS = ("auto", "on", "off")


def use_cpu_kernels(setting: str, backend: str | None = None) -> bool:
  """Whether `cpu_kernels` = setting takes the CPU layers on `backend` (default: JAX's)."""
  if setting not in CPU_KERNELS:
    raise errors.ConfigError(f"unknown cpu_kernels {setting!r}: config.model.cpu_kernels must "
                             f"be one of {', '.join(CPU_KERNELS)}")
  if setting == "auto":
    return (backend or jax.default_backend()) == "cpu"
  return setting == "on"


class SlotEncoding(NamedTuple):
  """e and the decoder's skip terms of every slot. Dummies carry no batch axis.

  The terms are `Decoder.project_skips` of the slot's skips: the skips themselves on stock
  layers, their terms in the merge layers on the CPU layers (`cpu.layers.SkipTerms`).
  """

  e_memory_BxTxE: jax.Array  # e(m_i), memory slots
  terms_memory: Any  # skip terms of m_i, each BxTx...
  e_dummy_DxE: jax.Array  # e(dummy_d)
  terms_dummy: Any  # each Dx...


class MemoryEncoding(NamedTuple):
  """What the model needs of (x, M), computed once and shared by all K samples.

  Memory slots come first (0 .. T-1), dummy slots after them (T .. T+D-1).
  """

  e_x_BxE: jax.Array  # e(x)
  address_logits_BxS: jax.Array  # <h(x), h(m_i)> for every slot i
  memory_BxTxHxW: jax.Array  # M itself, for encoding only the sampled slots
  slots: SlotEncoding | None  # every slot's encoding, or None: encode the sampled ones
  h_memory_BxTxA: jax.Array | None = None  # h(m_i), for a read that queries the memory
  h_dummy_DxA: jax.Array | None = None  # h(dummy_d)


class LogWeights(NamedTuple):
  """The K samples of one call and the terms of their log-weights."""

  log_w_BxK: jax.Array  # log p(x,z_k,a_k) - log q(z_k,a_k|x,M)
  log_q_a_BxK: jax.Array  # log q(a_k|x,M): the score of the discrete choice (VIMCO)
  log_px_BxK: jax.Array  # log p(x|z_k,m_{a_k})
  kl_z_BxK: jax.Array  # log q(z_k|x,m_{a_k}) - log p(z_k|m_{a_k}): one-sample KL estimate
  a_BxK: jax.Array  # sampled slots, int32 in [0, S)
  logits_BxKxHxW: jax.Array  # Bernoulli logits of p(x|z_k,m_{a_k})


def gather_slots(memory_BxTx, dummy_Dx, a_BxK):
  """value[b, k] = memory[b, a[b, k]] if a[b, k] < T else dummy[a[b, k] - T]."""
  memory_size = memory_BxTx.shape[1]
  dummy_BxKx = dummy_Dx[jnp.clip(a_BxK - memory_size, 0, dummy_Dx.shape[0] - 1)]
  if memory_size == 0:
    return dummy_BxKx
  memory_BxKx = jnp.take_along_axis(
      memory_BxTx,
      jnp.clip(a_BxK, 0, memory_size - 1).reshape(a_BxK.shape + (1,) * (memory_BxTx.ndim - 2)),
      axis=1)
  is_memory = (a_BxK < memory_size).reshape(a_BxK.shape + (1,) * (memory_BxTx.ndim - 2))
  return jnp.where(is_memory, memory_BxKx, dummy_BxKx)


def stack_rows(x_Bx, memory_BxTx):
  """The N = B(1 + T) rows `encode` runs its encoders on: each target, then its memory.

  Episode-major, so that a batch sharded over devices by episode stays split the same way
  (no data moves between devices). Stacks anything per image: images, or their indices.
  """
  rows_Bx = jnp.concatenate([x_Bx[:, None], memory_BxTx], axis=1)
  return rows_Bx.reshape((-1,) + rows_Bx.shape[2:])


def embed_every_slot(memory_size: int, num_importance: int) -> bool:
  """Whether `encode` should compute e of every slot once (K >= T), or leave `log_weights` to
  compute it for the K sampled slots only (K < T): whichever encodes fewer images."""
  return num_importance >= memory_size


class VMA(nn.Module):
  """The VMA model. Sizes default to the reference (1,118,409 parameters for 26x26 images).

  Attributes:
    image_size: height = width of the images (even; 26 or 28).
    latent_dim: Z, the size of z.
    embed_dim: E, the output size of the shared encoder e.
    match_dim: the output size of the address (matching) encoder h.
    num_dummies: D, learned image-shaped slots appended to every memory (initialised to 0).
    param_init: the layers' initial values, "torch" (the reference's PyTorch defaults) or
      "flax" (see `vma_jax.initializers`).
    dtype: computation dtype of the networks; parameters and log-densities stay float32.
    cpu_kernels: "auto" (the default: on when JAX's default backend is the CPU), "on" or
      "off": the networks on `vma_jax.cpu.layers`, the same function on layers XLA:CPU runs
      faster (custom gradients: no forward-mode differentiation), or on stock Flax layers.
  """

  image_size: int = 26
  latent_dim: int = 64
  embed_dim: int = 128
  match_dim: int = 200
  num_dummies: int = 2
  param_init: str = "torch"
  dtype: Any = "float32"
  cpu_kernels: str = "auto"

  def setup(self):
    if self.image_size % 2:
      raise errors.ConfigError(f"config.data.image_size must be even, got {self.image_size}")
    dtype = jnp.dtype(self.dtype)
    param_init = self.param_init
    encoder, decoder = ((cpu_layers.Encoder, cpu_layers.Decoder)
                        if use_cpu_kernels(self.cpu_kernels) else
                        (networks.Encoder, networks.Decoder))
    dense = lambda fan_in, name: nn.Dense(
        self.latent_dim, dtype=dtype, name=name, **initializers.layer_kwargs(param_init, fan_in))
    self.embed = encoder(self.embed_dim, param_init=param_init, dtype=dtype)  # e
    self.match = encoder(self.match_dim, param_init=param_init, dtype=dtype)  # h
    self.posterior_mean = dense(2 * self.embed_dim, "posterior_mean")  # mu_q of [e(x), e(m_a)]
    self.posterior_scale = dense(2 * self.embed_dim, "posterior_scale")  # sigma_q (softplus)
    self.prior_mean = dense(self.embed_dim, "prior_mean")  # mu_p of e(m_a)
    self.prior_scale = dense(self.embed_dim, "prior_scale")  # sigma_p (through softplus)
    self.memory_code = dense(self.embed_dim, "memory_code")  # g (after a ReLU)
    self.decoder = decoder(input_dim=2 * self.latent_dim, image_size=self.image_size,
                           param_init=param_init, dtype=dtype)
    self.dummies_DxHxW = self.param(
        "dummies", nn.initializers.zeros, (self.num_dummies, self.image_size, self.image_size))

  def __call__(self, x_BxHxW, memory_BxTxHxW, keys_BxK):
    """log-weights of K samples per episode; keys_BxK holds one key per (episode, sample)."""
    embed_slots = embed_every_slot(memory_BxTxHxW.shape[1], keys_BxK.shape[1])
    encoding = self.encode(x_BxHxW, memory_BxTxHxW, embed_slots=embed_slots)
    return self.log_weights(x_BxHxW, encoding, keys_BxK)

  def encode(self, x_BxHxW, memory_BxTxHxW, embed_slots: bool = True,
             distinct: distinct_lib.DistinctRows | None = None) -> MemoryEncoding:
    """e(x), h(x), h of every slot, and (if `embed_slots`) e and skip terms of every slot.

    Each image goes through each encoder at most once. With `embed_slots=False`, e of the
    memory is left to `log_weights`, which computes it for the sampled slots only. With
    `distinct` (the distinct images among the rows of `stack_rows`), h runs once per distinct
    image instead of once per row where they fit (`distinct.fits`, decided on the device).
    """
    batch, memory_size = memory_BxTxHxW.shape[:2]
    if x_BxHxW.shape[-2:] != (self.image_size,) * 2:
      raise ValueError(f"expected {self.image_size}x{self.image_size} images, "
                       f"got x of shape {x_BxHxW.shape}")
    # One encoder call for targets and memory items together: bigger, better-shaped convs.
    images_NxHxW = stack_rows(x_BxHxW, memory_BxTxHxW)
    per_episode = lambda v_N: v_N.reshape((batch, 1 + memory_size) + v_N.shape[1:])
    of_targets = lambda v_N: per_episode(v_N)[:, 0]
    to_memory = lambda v_N: per_episode(v_N)[:, 1:]
    h_NxA = self._match_rows(images_NxHxW, distinct)
    h_dummy_DxA, _ = self.match(self.dummies_DxHxW)
    h_x_BxA = of_targets(h_NxA).astype(jnp.float32)
    logits_memory_BxT = jnp.einsum(
        "ba,bta->bt", h_x_BxA, to_memory(h_NxA).astype(jnp.float32))
    logits_dummy_BxD = jnp.einsum("ba,da->bd", h_x_BxA, h_dummy_DxA.astype(jnp.float32))

    if embed_slots:
      e_NxE, skips_N = self.embed(images_NxHxW)
      e_x_BxE, slots = of_targets(e_NxE), self._slot_encoding(to_memory(e_NxE), skips_N)
    else:
      (e_x_BxE, _), slots = self.embed(x_BxHxW), None
    return MemoryEncoding(
        e_x_BxE=e_x_BxE,
        address_logits_BxS=jnp.concatenate([logits_memory_BxT, logits_dummy_BxD], axis=1),
        memory_BxTxHxW=memory_BxTxHxW,
        slots=slots,
        h_memory_BxTxA=to_memory(h_NxA),
        h_dummy_DxA=h_dummy_DxA)

  def _match_rows(self, images_NxHxW, distinct: distinct_lib.DistinctRows | None):
    """h of every row; with `distinct`, computed once per distinct image where they fit."""
    if distinct is None:
      return self.match(images_NxHxW)[0]
    # h of the U distinct rows, gathered back to the N rows. The V rows whose image got none
    # (a batch with more than U distinct images, rare) take h computed in a cond, decided on
    # the device: one program for every batch. Only those rows run inside the cond (XLA:CPU
    # runs convs slower in a conditional), V = N - U at most (each of the U images has a
    # row), recomputed for the gradient (a cond keeps the residuals of both branches).
    num_rows, capacity_u = distinct.inverse_N.shape[0], distinct.row_U.shape[0]
    h_UxA, _ = self.match(images_NxHxW[distinct.row_U])
    has_row_N = distinct.inverse_N < capacity_u
    h_NxA = h_UxA[jnp.where(has_row_N, distinct.inverse_N, 0)]
    num_rest = num_rows - capacity_u
    if num_rest <= 0:
      return h_NxA
    (rest_V,) = jnp.nonzero(~has_row_N, size=num_rest, fill_value=0)
    no_rest = lambda vma, images_NxHxW, rest_V: jnp.zeros(
        (num_rest,) + h_UxA.shape[1:], h_UxA.dtype)
    rest = nn.remat(lambda vma, images_NxHxW, rest_V: vma.match(images_NxHxW[rest_V])[0])
    h_rest_VxA = nn.cond(distinct_lib.fits(distinct), no_rest, rest, self, images_NxHxW,
                         rest_V)
    rest_of_N = jnp.clip(jnp.cumsum(~has_row_N) - 1, 0, num_rest - 1)
    return jnp.where(has_row_N[:, None], h_NxA, h_rest_VxA[rest_of_N])

  def _slot_encoding(self, e_memory_BxTxE, skips_N) -> SlotEncoding:
    """e and the skip terms of every slot, from the encoder's outputs on the N = B(1+T) rows
    (targets first in each episode, `stack_rows`) and on the dummies."""
    batch, memory_size = e_memory_BxTxE.shape[:2]
    memory_rows = lambda v_N: v_N.reshape((batch, 1 + memory_size) + v_N.shape[1:])[:, 1:]
    flatten = lambda v_BxTx: v_BxTx.reshape((-1,) + v_BxTx.shape[2:])
    as_memory = lambda v_BTx: v_BTx.reshape((batch, memory_size) + v_BTx.shape[1:])
    e_dummy_DxE, skips_dummy = self.embed(self.dummies_DxHxW)
    terms_BT = self.decoder.project_skips(
        jax.tree.map(lambda v: flatten(memory_rows(v)), skips_N))
    return SlotEncoding(
        e_memory_BxTxE=e_memory_BxTxE,
        terms_memory=jax.tree.map(as_memory, terms_BT),
        e_dummy_DxE=e_dummy_DxE,
        terms_dummy=self.decoder.project_skips(skips_dummy))

  def _sampled_slots(self, memory_BxTxHxW, slots: SlotEncoding | None, a_BxK):
    """e(m_{a_k}) and the skip terms of m_{a_k}: gathered from `slots`, or computed if None."""
    if slots is not None:
      gather = lambda memory, dummy: gather_slots(memory, dummy, a_BxK)
      return (gather(slots.e_memory_BxTxE, slots.e_dummy_DxE),
              jax.tree.map(gather, slots.terms_memory, slots.terms_dummy))
    images_BxKxHxW = gather_slots(memory_BxTxHxW, self.dummies_DxHxW, a_BxK)
    e_NxE, skips_N = self.embed(images_BxKxHxW.reshape((-1,) + images_BxKxHxW.shape[2:]))
    unflatten = lambda v: v.reshape(a_BxK.shape + v.shape[1:])
    return unflatten(e_NxE), jax.tree.map(unflatten, self.decoder.project_skips(skips_N))

  def log_weights(self, x_BxHxW, encoding: MemoryEncoding, keys_BxK) -> LogWeights:
    """Draws a_k ~ q(a|x,M), z_k ~ q(z|x,m_{a_k}) from keys_BxK and scores them."""
    key_a_BxK, key_z_BxK = _split2(keys_BxK)
    log_q_all_BxS = distributions.categorical_log_probs(encoding.address_logits_BxS)
    num_slots = log_q_all_BxS.shape[-1]
    # Over episodes, then over samples sharing their episode's logits (no BxKxS copy).
    a_BxK = jax.vmap(jax.vmap(jax.random.categorical, in_axes=(0, None)))(
        key_a_BxK, log_q_all_BxS)
    a_BxK = a_BxK.astype(jnp.int32)
    log_q_a_BxK = jnp.take_along_axis(log_q_all_BxS, a_BxK, axis=1)

    e_m_BxKxE, terms_BxK = self._sampled_slots(encoding.memory_BxTxHxW, encoding.slots, a_BxK)
    e_x_BxKxE = jnp.broadcast_to(encoding.e_x_BxE[:, None], e_m_BxKxE.shape)

    q_mean_BxKxZ, q_std_BxKxZ = self._gaussian(
        self.posterior_mean, self.posterior_scale, jnp.concatenate([e_x_BxKxE, e_m_BxKxE], -1))
    p_mean_BxKxZ, p_std_BxKxZ = self._gaussian(self.prior_mean, self.prior_scale, e_m_BxKxE)

    # One key per sample (not one for the batch): chunked bounds draw the same z_k.
    eps_BxKxZ = jax.vmap(jax.vmap(
        lambda key: jax.random.normal(key, (self.latent_dim,))))(key_z_BxK)
    z_BxKxZ = q_mean_BxKxZ + q_std_BxKxZ * eps_BxKxZ
    log_qz_BxK = distributions.gaussian_log_prob(z_BxKxZ, q_mean_BxKxZ, q_std_BxKxZ)
    log_pz_BxK = distributions.gaussian_log_prob(z_BxKxZ, p_mean_BxKxZ, p_std_BxKxZ)

    logits_BxKxHxW = self._decode(z_BxKxZ, e_m_BxKxE, terms_BxK)
    log_px_BxK = distributions.bernoulli_log_prob(x_BxHxW[:, None], logits_BxKxHxW)
    log_pa = -math.log(num_slots)
    log_w_BxK = log_px_BxK + log_pz_BxK + log_pa - log_qz_BxK - log_q_a_BxK
    return LogWeights(
        log_w_BxK=log_w_BxK, log_q_a_BxK=log_q_a_BxK, log_px_BxK=log_px_BxK,
        kl_z_BxK=log_qz_BxK - log_pz_BxK, a_BxK=a_BxK, logits_BxKxHxW=logits_BxKxHxW)

  @staticmethod
  def _gaussian(mean_head, scale_head, inputs):
    """(mean, stddev) in float32 of a diagonal Gaussian head: stddev = softplus(scale)."""
    return (mean_head(inputs).astype(jnp.float32),
            jax.nn.softplus(scale_head(inputs).astype(jnp.float32)))

  def _decode(self, z_BxKxZ, e_m_BxKxE, terms_BxK):
    """Bernoulli logits of p(x | z, m_a): one decoder pass over all B*K samples."""
    lead = z_BxKxZ.shape[:2]
    flat = lambda v: v.reshape((-1,) + v.shape[2:])
    code_BxKxZ = self.memory_code(nn.relu(e_m_BxKxE))
    input_NxI = jnp.concatenate([flat(z_BxKxZ), flat(code_BxKxZ).astype(z_BxKxZ.dtype)], axis=-1)
    logits_NxHxW = self.decoder(input_NxI, jax.tree.map(flat, terms_BxK))
    return logits_NxHxW.reshape(lead + logits_NxHxW.shape[1:])

  def generate(self, memory_BxTxHxW, a_BxK, key):
    """Bernoulli means of x ~ p(x | z, m_a) with z ~ p(z | m_a), for given slots a_BxK."""
    e_m_BxKxE, terms_BxK = self._sampled_slots(memory_BxTxHxW, None, a_BxK)
    p_mean_BxKxZ, p_std_BxKxZ = self._gaussian(self.prior_mean, self.prior_scale, e_m_BxKxE)
    z_BxKxZ = distributions.gaussian_sample(key, p_mean_BxKxZ, p_std_BxKxZ)
    return jax.nn.sigmoid(self._decode(z_BxKxZ, e_m_BxKxE, terms_BxK))


class PlainVAE(VMA):
  """Baseline: a VAE whose only slots are the D learned dummies (a VMA with T = 0).

  The memory of an episode is ignored, so its bound on every cell is the same: p(a) =
  Uniform(D), and a plain VAE with D learned pseudo-inputs. Trained with T = 0
  (configs/baseline_vae.py).
  """

  def encode(self, x_BxHxW, memory_BxTxHxW, embed_slots: bool = True,
             distinct: distinct_lib.DistinctRows | None = None) -> MemoryEncoding:
    del distinct  # the rows of the memory, which is dropped
    return super().encode(x_BxHxW, memory_BxTxHxW[:, :0], embed_slots=embed_slots)


class SoftAttentionVAE(VMA):
  """Baseline: the memory read by soft attention, a deterministic mixture of every slot.

  No address variable. With w_i(u) = softmax_i <u, h(m_i)> over the S slots and a read
  r(u) = sum_i w_i(u) [e(m_i), skips(m_i)] (the embedding and the skip connections mixed
  alike):

    p(z) = N(0, I)
    p(x | z, M) = Bernoulli(dec([z, g(r_e(k(z)))], r_skips(k(z))))   k: a learned query
    q(z | x, M) = N(mu_q([e(x), r_e(h(x))]), sigma_q([e(x), r_e(h(x))]))

  and log w_k = log p(x|z_k,M) + log p(z_k) - log q(z_k|x,M). Every sample reads all S
  slots: the decoder's inputs cost O(K S) per episode, against O(K) for the hard address.
  The generative model reads M through z alone, so L_K bounds log p(x | M). Trained with
  L_K (its gradient: no score-function term, `log_q_a_BxK` is zero); configs/baseline_soft.py.
  """

  def setup(self):
    super().setup()
    self.query = nn.Dense(self.match_dim, dtype=jnp.dtype(self.dtype), name="query",
                          **initializers.layer_kwargs(self.param_init, self.latent_dim))

  def encode(self, x_BxHxW, memory_BxTxHxW, embed_slots: bool = True,
             distinct: distinct_lib.DistinctRows | None = None) -> MemoryEncoding:
    del embed_slots  # every sample reads every slot: all are encoded
    return super().encode(x_BxHxW, memory_BxTxHxW, embed_slots=True, distinct=distinct)

  def _read(self, w_BxKxS, slots: SlotEncoding):
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

  def _query_weights(self, z_BxKxZ, encoding: MemoryEncoding):
    """w(k(z)) over the S slots, per sample."""
    batch = z_BxKxZ.shape[0]
    h_BxSxA = jnp.concatenate(
        [encoding.h_memory_BxTxA, jnp.broadcast_to(
            encoding.h_dummy_DxA, (batch,) + encoding.h_dummy_DxA.shape)], axis=1)
    u_BxKxA = self.query(z_BxKxZ).astype(jnp.float32)
    return jax.nn.softmax(jnp.einsum("bka,bsa->bks", u_BxKxA, h_BxSxA.astype(jnp.float32)), -1)

  def log_weights(self, x_BxHxW, encoding: MemoryEncoding, keys_BxK) -> LogWeights:
    """z_k ~ q(z|x,M) from keys_BxK, scored under p(z) p(x|z,M)."""
    w_x_Bx1xS = jax.nn.softmax(encoding.address_logits_BxS.astype(jnp.float32), -1)[:, None]
    e_read_x_BxE = self._read(w_x_Bx1xS, encoding.slots)[0][:, 0]
    q_mean_BxZ, q_std_BxZ = self._gaussian(
        self.posterior_mean, self.posterior_scale,
        jnp.concatenate([encoding.e_x_BxE, e_read_x_BxE.astype(encoding.e_x_BxE.dtype)], -1))
    eps_BxKxZ = jax.vmap(jax.vmap(
        lambda key: jax.random.normal(key, (self.latent_dim,))))(keys_BxK)
    z_BxKxZ = q_mean_BxZ[:, None] + q_std_BxZ[:, None] * eps_BxKxZ
    log_qz_BxK = distributions.gaussian_log_prob(z_BxKxZ, q_mean_BxZ[:, None],
                                                 q_std_BxZ[:, None])
    log_pz_BxK = distributions.gaussian_log_prob(z_BxKxZ, 0.0, 1.0)
    w_BxKxS = self._query_weights(z_BxKxZ, encoding)
    e_m_BxKxE, terms_BxK = self._read(w_BxKxS, encoding.slots)
    logits_BxKxHxW = self._decode(z_BxKxZ, e_m_BxKxE, terms_BxK)
    log_px_BxK = distributions.bernoulli_log_prob(x_BxHxW[:, None], logits_BxKxHxW)
    return LogWeights(
        log_w_BxK=log_px_BxK + log_pz_BxK - log_qz_BxK,
        log_q_a_BxK=jnp.zeros_like(log_px_BxK), log_px_BxK=log_px_BxK,
        kl_z_BxK=log_qz_BxK - log_pz_BxK,
        a_BxK=jnp.argmax(w_BxKxS, axis=-1).astype(jnp.int32),  # the slot read the most
        logits_BxKxHxW=logits_BxKxHxW)

  def generate(self, memory_BxTxHxW, a_BxK, key):
    """Bernoulli means of x ~ p(x | z, M), z ~ p(z); a_BxK gives only the number of
    samples (the read is the attention's, not a chosen slot)."""
    batch, num_samples = a_BxK.shape
    size = memory_BxTxHxW.shape[-1]
    encoding = self.encode(jnp.zeros((batch, size, size), memory_BxTxHxW.dtype), memory_BxTxHxW)
    z_BxKxZ = jax.random.normal(key, (batch, num_samples, self.latent_dim))
    e_m_BxKxE, terms_BxK = self._read(self._query_weights(z_BxKxZ, encoding), encoding.slots)
    return jax.nn.sigmoid(self._decode(z_BxKxZ, e_m_BxKxE, terms_BxK))


# config.model.memory_read: how the generator reads the memory.
MEMORY_READS = {"hard": VMA, "soft": SoftAttentionVAE, "none": PlainVAE}


def _split2(keys):
  """Splits every key of an array of keys in two: (keys_a, keys_b) of the same shape."""
  split = jax.vmap(lambda key: jax.random.split(key, 2))(keys.reshape(-1))
  return split[:, 0].reshape(keys.shape), split[:, 1].reshape(keys.shape)


def sample_keys(episode_keys_B, start, num_importance):
  """keys_BxK with keys[b, k] = fold_in(episode_keys[b], start + k).

  The key of sample k depends only on its episode's key and on k, so a bound computed in
  chunks [start, start + num_importance) draws the same samples as one computed at once.
  """
  index_K = start + jnp.arange(num_importance, dtype=jnp.uint32)
  return jax.vmap(lambda key: jax.vmap(lambda i: jax.random.fold_in(key, i))(index_K))(
      episode_keys_B)


def make_model(config) -> VMA:
  """The model of a full experiment config (`config.model`, image size from `config.data`):
  `VMA`, or the baseline that config.model.memory_read names (`MEMORY_READS`)."""
  fields = dict(config.model)
  memory_read = fields.pop("memory_read", "hard")
  if memory_read not in MEMORY_READS:
    raise errors.ConfigError(f"unknown config.model.memory_read {memory_read!r}; choose one of "
                     f"{', '.join(MEMORY_READS)}")
  return MEMORY_READS[memory_read](image_size=config.data.image_size, **fields)


def init_params(config, key):
  """Fresh variables of `make_model(config)`. Their shapes do not depend on T or K, so one
  dummy episode (B = T = K = 1) creates them."""
  size = config.data.image_size
  x_BxHxW = jnp.zeros((1, size, size), jnp.float32)
  memory_BxTxHxW = jnp.zeros((1, 1, size, size), jnp.float32)
  keys_BxK = jax.random.split(jax.random.key(0), (1, 1))
  return make_model(config).init(key, x_BxHxW, memory_BxTxHxW, keys_BxK)
