"""What a memory read is: its interface, the registry of reads, and the pieces reads share.

A read is a generative model of a target x given a memory M = (m_1 ... m_T), built on the
shared networks (`Read.setup`: e, h, the Gaussian heads, g and the decoder of docs/model.md)
and its own way of reading M. Every read answers:

  encode(x, M)                  what it needs of (x, M), computed once, shared by K samples
  log_weights(x, encoding, keys_BxK) -> LogWeights: K samples per episode, their log w_k
  generate(M, key, K, x=None)   means of p(x | ...) generated from M: the read chooses how it
                                reads M (e.g. a ~ p(a), or a ~ q(a | x, M) given x)
  address(encoding)             its address posterior q(a | x, M) as `Address`, or None
  learned_slots()               images of the slots it adds to every memory, or None
  reads_memory                  False for a read that ignores M

`register(name)` puts a read into READS, the classes that `config.model.memory_read` names.
Samples are drawn from explicit keys, one per (episode, sample) (`sample_keys`), so that a
bound computed in chunks of samples draws exactly the samples of the unchunked one.

Shape letters: B episodes, T memory slots, D learned slots, S slots of an address, K samples,
N rows of a flattened batch, HxW image, E = embed_dim (e), A = match_dim (h), Z = latent_dim.
"""

from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp

from vma_jax import errors
from vma_jax import initializers
from vma_jax import networks
from vma_jax.cpu import layers as cpu_layers

CPU_KERNELS = ("auto", "on", "off")


def use_cpu_kernels(setting: str, backend: str | None = None) -> bool:
  """Whether `cpu_kernels` = setting takes the CPU layers on `backend` (default: JAX's)."""
  if setting not in CPU_KERNELS:
    raise errors.ConfigError(f"unknown cpu_kernels {setting!r}: config.model.cpu_kernels must "
                             f"be one of {', '.join(CPU_KERNELS)}")
  if setting == "auto":
    return (backend or jax.default_backend()) == "cpu"
  return setting == "on"


class LogWeights(NamedTuple):
  """The K samples of one call and the terms of their log-weights. A read without a discrete
  choice leaves its two fields None: no score term in the objective, no slot summaries."""

  log_w_BxK: jax.Array  # log p(x, z_k, ...) - log q(z_k, ... | x, M)
  log_px_BxK: jax.Array  # log p(x | z_k, ...)
  kl_z_BxK: jax.Array  # log q(z_k | ...) - log p(z_k | ...): one-sample KL estimate
  logits_BxKxHxW: jax.Array  # Bernoulli logits of p(x | z_k, ...)
  log_q_a_BxK: jax.Array | None = None  # log q(a_k | x, M): the score of the choice (VIMCO)
  a_BxK: jax.Array | None = None  # the slots read, int32 indices into the `Address`'s S


@struct.dataclass
class Address:
  """q(a | x, M) over S slots: the episode's first `memory_size` memory slots, then the
  read's learned slots (`learned_slots`)."""

  logits_BxS: jax.Array
  memory_size: int = struct.field(pytree_node=False)


class Read(nn.Module):
  """The shared networks and the interface of a memory read (the module's docstring).

  Attributes (`config.model`; the image size comes from `config.data`):
    image_size: height = width of the images (even; 26 or 28).
    latent_dim: Z, the size of z.
    embed_dim: E, the output size of the shared encoder e.
    match_dim: A, the output size of the address (matching) encoder h.
    num_dummies: D, learned image-shaped slots a read may add to every memory.
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

  reads_memory: ClassVar[bool] = True

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

  def __call__(self, x_BxHxW, memory_BxTxHxW, keys_BxK) -> LogWeights:
    """log-weights of K samples per episode; keys_BxK holds one key per (episode, sample)."""
    embed_slots = embed_every_slot(memory_BxTxHxW.shape[1], keys_BxK.shape[1])
    encoding = self.encode(x_BxHxW, memory_BxTxHxW, embed_slots=embed_slots)
    return self.log_weights(x_BxHxW, encoding, keys_BxK)

  # The interface. `embed_slots` and `distinct` of `encode` are hints a read may ignore:
  # whether to embed every slot once (K >= T) and the batch's distinct images
  # (`vma_jax.distinct`).

  def encode(self, x_BxHxW, memory_BxTxHxW, embed_slots: bool = True, distinct=None):
    raise NotImplementedError

  def log_weights(self, x_BxHxW, encoding, keys_BxK) -> LogWeights:
    raise NotImplementedError

  def generate(self, memory_BxTxHxW, key, num_samples: int, x_BxHxW=None):
    raise NotImplementedError

  def address(self, encoding) -> Address | None:
    del encoding
    return None

  def learned_slots(self) -> jax.Array | None:
    return None

  # Shared pieces.

  @staticmethod
  def gaussian(mean_head, scale_head, inputs):
    """(mean, stddev) in float32 of a diagonal Gaussian head: stddev = softplus(scale)."""
    return (mean_head(inputs).astype(jnp.float32),
            jax.nn.softplus(scale_head(inputs).astype(jnp.float32)))

  def decode(self, z_BxKxZ, e_m_BxKxE, terms_BxK):
    """Bernoulli logits of p(x | z, m): dec([z, g(e(m))], skips(m)), one decoder pass over
    all B*K samples; `terms_BxK` are the skips' terms (`Decoder.project_skips`)."""
    lead = z_BxKxZ.shape[:2]
    flat = lambda v: v.reshape((-1,) + v.shape[2:])
    code_BxKxZ = self.memory_code(nn.relu(e_m_BxKxE))
    input_NxI = jnp.concatenate([flat(z_BxKxZ), flat(code_BxKxZ).astype(z_BxKxZ.dtype)], axis=-1)
    logits_NxHxW = self.decoder(input_NxI, jax.tree.map(flat, terms_BxK))
    return logits_NxHxW.reshape(lead + logits_NxHxW.shape[1:])


# config.model.memory_read -> the read's class; filled by `register`.
READS: dict[str, type[Read]] = {}


def register(name: str):
  """Class decorator: `config.model.memory_read = name` selects the read."""

  def add(read: type[Read]) -> type[Read]:
    READS[name] = read
    return read

  return add


def normal(keys_BxK, size: int):
  """eps_BxKxZ ~ N(0, I), each row from its own key (chunked bounds draw the same z_k)."""
  return jax.vmap(jax.vmap(lambda key: jax.random.normal(key, (size,))))(keys_BxK)


def split2(keys):
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


def gather_slots(memory_BxTx, learned_Dx, a_BxK):
  """value[b, k] = memory[b, a[b, k]] if a[b, k] < T else learned[a[b, k] - T]."""
  memory_size = memory_BxTx.shape[1]
  learned_BxKx = learned_Dx[jnp.clip(a_BxK - memory_size, 0, learned_Dx.shape[0] - 1)]
  if memory_size == 0:
    return learned_BxKx
  memory_BxKx = jnp.take_along_axis(
      memory_BxTx,
      jnp.clip(a_BxK, 0, memory_size - 1).reshape(a_BxK.shape + (1,) * (memory_BxTx.ndim - 2)),
      axis=1)
  is_memory = (a_BxK < memory_size).reshape(a_BxK.shape + (1,) * (memory_BxTx.ndim - 2))
  return jnp.where(is_memory, memory_BxKx, learned_BxKx)


def retrieved_images(address: Address, memory_BxTxHxW, learned_DxHxW):
  """The image of each episode's slot argmax_a q(a | x, M): BxHxW."""
  if learned_DxHxW is None:
    learned_DxHxW = jnp.zeros((1,) + memory_BxTxHxW.shape[2:], memory_BxTxHxW.dtype)
  a_Bx1 = jnp.argmax(address.logits_BxS, axis=1)[:, None]
  return gather_slots(memory_BxTxHxW[:, :address.memory_size], learned_DxHxW, a_Bx1)[:, 0]


def stack_rows(x_Bx, memory_BxTx):
  """The N = B(1 + T) rows an encoder runs on: each target, then its memory.

  Episode-major, so that a batch sharded over devices by episode stays split the same way
  (no data moves between devices). Stacks anything per image: images, or their indices.
  """
  rows_Bx = jnp.concatenate([x_Bx[:, None], memory_BxTx], axis=1)
  return rows_Bx.reshape((-1,) + rows_Bx.shape[2:])


def embed_every_slot(memory_size: int, num_importance: int) -> bool:
  """Whether `encode` should compute e of every slot once (K >= T), or leave `log_weights` to
  compute it for the K sampled slots only (K < T): whichever encodes fewer images."""
  return num_importance >= memory_size
