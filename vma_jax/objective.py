"""The objective: the K-sample bound L_K, its VIMCO gradient, and the large-K evaluation bound.

With log-weights log w_1..K of one episode (see `vma_jax.model`):

  L_K = logsumexp_k(log w_k) - log K        (importance-weighted bound, <= log p(x | M))

Gradients reach the continuous parts through the reparameterised z. The discrete address a
gets the VIMCO score-function estimator with a per-sample leave-one-out baseline L^{-k}:

  grad L_K ~= sum_k (L_K - L^{-k}) grad log q(a_k|x,M) + sum_k wtilde_k grad log w_k,

wtilde = softmax(log w). Two baselines:

  arithmetic  L^{-k} = logsumexp_{j!=k}(log w_j) - log(K-1)
  geometric   L^{-k} = log((sum_{j!=k} w_j + exp(mean_{j!=k} log w_j)) / K)   (Mnih & Rezende)

`vimco_surrogate` returns a scalar per episode whose value is L_K and whose gradient is this
estimator, so a loss is simply `-mean(vimco_surrogate(...))`.
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from vma_jax import distributions
from vma_jax import model as vma_model

BASELINES = ("arithmetic", "geometric")


def iw_bound(log_w_BxK):
  """L_K = logsumexp_k(log w_k) - log K, per episode: shape B."""
  return jax.nn.logsumexp(log_w_BxK, axis=-1) - math.log(log_w_BxK.shape[-1])


def leave_one_out_bounds(log_w_BxK, baseline="arithmetic"):
  """L^{-k} for every k, per episode: shape BxK. Computed with vmap over k."""
  num_samples = log_w_BxK.shape[-1]
  if num_samples < 2:
    raise ValueError(f"leave-one-out baselines need K >= 2 samples, got K = {num_samples}")
  index_K = jnp.arange(num_samples)

  if baseline == "arithmetic":

    def loo(log_w_K, k):
      return jax.nn.logsumexp(log_w_K, where=index_K != k) - math.log(num_samples - 1)

  elif baseline == "geometric":

    def loo(log_w_K, k):
      # w_k is replaced by the geometric mean of the other weights.
      log_geo_mean = (jnp.sum(log_w_K) - log_w_K[k]) / (num_samples - 1)
      return jax.nn.logsumexp(jnp.where(index_K == k, log_geo_mean, log_w_K)) - math.log(
          num_samples)

  else:
    raise ValueError(f"unknown VIMCO baseline {baseline!r}; expected one of {BASELINES}")

  per_k = jax.vmap(loo, in_axes=(None, 0))  # over k
  return jax.vmap(per_k, in_axes=(0, None))(log_w_BxK, index_K)  # over episodes


def vimco_surrogate(log_w_BxK, log_q_a_BxK, baseline="arithmetic"):
  """Per-episode surrogate: value L_K, gradient the VIMCO estimator (shape B).

  Args:
    log_w_BxK: log-weights, differentiable (reparameterised z, log q(a_k|x,M) included).
    log_q_a_BxK: log q(a_k|x,M) of the sampled addresses, differentiable.
    baseline: "arithmetic" or "geometric" leave-one-out baseline.
  """
  bound_B = iw_bound(log_w_BxK)
  signal_BxK = jax.lax.stop_gradient(bound_B[:, None] - leave_one_out_bounds(log_w_BxK, baseline))
  # Zero in value, signal_k * grad log q(a_k) in gradient.
  score_BxK = log_q_a_BxK - jax.lax.stop_gradient(log_q_a_BxK)
  return bound_B + jnp.sum(signal_BxK * score_BxK, axis=-1)


def address_kl(address_logits_BxS):
  """KL(q(a|x,M) || p(a)) per episode, with p(a) = Uniform(S)."""
  return distributions.categorical_kl_to_uniform(address_logits_BxS)


def streaming_bound(apply_fn: Callable, params, x_BxHxW, memory_BxTxHxW, episode_keys_B, *,
                    num_samples: int, chunk_size: int = 100):
  """L_K per episode for large K, in chunks of samples with a running log-sum-exp.

  Memory does not grow with K: x and M are encoded once, then `ceil(K / chunk_size)` chunks of
  at most `chunk_size` samples each are decoded in turn. Sample k is drawn from
  fold_in(episode_key, k) whatever the chunking, so the value equals the unchunked
  `iw_bound` of the same samples up to float32 rounding.

  Args:
    apply_fn: the model's `apply` (e.g. `VMA(...).apply`).
    params: the model's variables.
    x_BxHxW, memory_BxTxHxW: the episodes.
    episode_keys_B: one key per episode.
    num_samples: K.
    chunk_size: samples decoded at once; the peak memory is set by B * chunk_size.
  Returns:
    L_K, shape B (float32).
  """
  chunk_size = min(chunk_size, num_samples)
  num_chunks = -(-num_samples // chunk_size)
  encoding = apply_fn(params, x_BxHxW, memory_BxTxHxW, method=vma_model.VMA.encode)
  batch = x_BxHxW.shape[0]

  def step(carry, start):
    max_B, sum_B = carry
    keys_BxC = vma_model.sample_keys(episode_keys_B, start, chunk_size)
    log_w_BxC = apply_fn(
        params, x_BxHxW, encoding, keys_BxC, method=vma_model.VMA.log_weights).log_w_BxK
    valid_1xC = (start + jnp.arange(chunk_size, dtype=jnp.uint32) < num_samples)[None]
    log_w_BxC = jnp.where(valid_1xC, log_w_BxC, -jnp.inf)  # the last chunk may be partial
    new_max_B = jnp.maximum(max_B, jnp.max(log_w_BxC, axis=-1))
    sum_B = sum_B * jnp.exp(max_B - new_max_B) + jnp.sum(
        jnp.exp(log_w_BxC - new_max_B[:, None]), axis=-1)
    return (new_max_B, sum_B), None

  init = (jnp.full((batch,), -jnp.inf), jnp.zeros((batch,)))
  starts = jnp.arange(num_chunks, dtype=jnp.uint32) * chunk_size
  (max_B, sum_B), _ = jax.lax.scan(step, init, starts)
  return max_B + jnp.log(sum_B) - math.log(num_samples)
