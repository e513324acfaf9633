"""The objective: the K-sample bound L_K and its VIMCO gradient, as functions of log-weights.

With log-weights log w_1..K of one episode (see `vma_jax.model`):

  L_K = logsumexp_k(log w_k) - log K        (importance-weighted bound, <= log p(x | M))

Gradients reach the continuous parts through the reparameterised z. The discrete address a
gets the VIMCO score-function estimator with a per-sample leave-one-out baseline L^{-k}:

  grad L_K ~= sum_k (L_K - L^{-k}) grad log q(a_k|x,M) + sum_k wtilde_k grad log w_k,

wtilde = softmax(log w). Two baselines:

  arithmetic  L^{-k} = logsumexp_{j!=k}(log w_j) - log(K-1)
  geometric   L^{-k} = log((sum_{j!=k} w_j + exp(mean_{j!=k} log w_j)) / K)   (Mnih & Rezende)

`vimco_surrogate` returns a scalar per episode whose value is L_K and whose gradient is this
estimator; a read without a discrete address (`LogWeights.log_q_a_BxK` None) has no score
term, and the surrogate is L_K itself. The training loss is `-mean(vimco_surrogate(...))`
(`make_loss_fn`), summarised per step by `step_metrics`; `streaming_bound` computes the
large-K bound in chunks of samples, and `address_summary` where q(a|x,M) puts its mass. The
model that produces the log-weights is `vma_jax.model`. The derivation is in docs/model.md
(The objective; The estimator; The large-K bound in chunks).
"""

import math
from typing import Callable

import jax
import jax.numpy as jnp

from vma_jax import distinct as distinct_lib
from vma_jax import distributions
from vma_jax import errors
from vma_jax import model as vma_model

BASELINES = ("arithmetic", "geometric")


def iw_bound(log_w_BxK):
  """L_K = logsumexp_k(log w_k) - log K, per episode: shape B."""
  return jax.nn.logsumexp(log_w_BxK, axis=-1) - math.log(log_w_BxK.shape[-1])


def leave_one_out_bounds(log_w_BxK, baseline="arithmetic"):
  """L^{-k} for every k, per episode: shape BxK. Computed with vmap over k."""
  num_importance = log_w_BxK.shape[-1]
  if num_importance < 2:
    raise errors.ConfigError(f"leave-one-out baselines need K >= 2 samples, got K = "
                             f"{num_importance} (config.objective.num_importance)")
  index_K = jnp.arange(num_importance)

  if baseline == "arithmetic":

    def loo(log_w_K, k):
      return jax.nn.logsumexp(log_w_K, where=index_K != k) - math.log(num_importance - 1)

  elif baseline == "geometric":

    def loo(log_w_K, k):
      # w_k is replaced by the geometric mean of the other weights.
      log_geo_mean = (jnp.sum(log_w_K) - log_w_K[k]) / (num_importance - 1)
      return jax.nn.logsumexp(jnp.where(index_K == k, log_geo_mean, log_w_K)) - math.log(
          num_importance)

  else:
    raise errors.ConfigError(f"unknown VIMCO baseline {baseline!r} (config.objective.baseline); "
                             f"expected one of {BASELINES}")

  per_k = jax.vmap(loo, in_axes=(None, 0))  # over k
  return jax.vmap(per_k, in_axes=(0, None))(log_w_BxK, index_K)  # over episodes


def vimco_surrogate(log_w_BxK, log_q_a_BxK=None, baseline="arithmetic"):
  """Per-episode surrogate: value L_K, gradient the VIMCO estimator (shape B).

  Args:
    log_w_BxK: log-weights, differentiable (reparameterised z, log q(a_k|x,M) included).
    log_q_a_BxK: log q(a_k|x,M) of the sampled addresses, differentiable; None for a read
      without a discrete address: the surrogate is then L_K.
    baseline: "arithmetic" or "geometric" leave-one-out baseline.
  """
  bound_B = iw_bound(log_w_BxK)
  if log_q_a_BxK is None:
    return bound_B
  signal_BxK = jax.lax.stop_gradient(bound_B[:, None] - leave_one_out_bounds(log_w_BxK, baseline))
  # Zero in value, signal_k * grad log q(a_k) in gradient.
  score_BxK = log_q_a_BxK - jax.lax.stop_gradient(log_q_a_BxK)
  return bound_B + jnp.sum(signal_BxK * score_BxK, axis=-1)


def address_kl(address_logits_BxS):
  """KL(q(a|x,M) || p(a)) per episode, with p(a) = Uniform(S)."""
  return distributions.categorical_kl_to_uniform(address_logits_BxS)


def streaming_bound(apply_fn: Callable, params, x_BxHxW, memory_BxTxHxW, episode_keys_B, *,
                    num_importance: int, chunk_size: int = 100, encoding=None):
  """L_K per episode for large K, in chunks of samples with a running log-sum-exp.

  Memory does not grow with K: x and M are encoded once, then `ceil(K / chunk_size)` chunks of
  at most `chunk_size` samples each are decoded in turn. Sample k is drawn from
  fold_in(episode_key, k) whatever the chunking, so the value equals the unchunked
  `iw_bound` of the same samples up to float32 rounding.

  Args:
    apply_fn: the model's `apply` (e.g. `make_model(config).apply`).
    params: the model's variables.
    x_BxHxW, memory_BxTxHxW: the episodes.
    episode_keys_B: one key per episode.
    num_importance: K.
    chunk_size: samples decoded at once; the peak memory is set by B * chunk_size.
    encoding: the model's `encode` of (x, M), if the caller has it already.
  Returns:
    L_K, shape B (float32).
  """
  chunk_size = min(chunk_size, num_importance)
  num_chunks = -(-num_importance // chunk_size)
  if encoding is None:
    encoding = apply_fn(params, x_BxHxW, memory_BxTxHxW, method="encode")
  batch = x_BxHxW.shape[0]

  def add_chunk(carry, start):
    # The chunk's C = chunk_size samples are start .. start + C - 1.
    max_B, sum_B = carry
    keys_BxC = vma_model.sample_keys(episode_keys_B, start, chunk_size)
    log_w_BxC = apply_fn(params, x_BxHxW, encoding, keys_BxC, method="log_weights").log_w_BxK
    in_range_C = start + jnp.arange(chunk_size, dtype=jnp.uint32) < num_importance
    log_w_BxC = jnp.where(in_range_C[None], log_w_BxC, -jnp.inf)  # the last may be partial
    new_max_B = jnp.maximum(max_B, jnp.max(log_w_BxC, axis=-1))
    sum_B = sum_B * jnp.exp(max_B - new_max_B) + jnp.sum(
        jnp.exp(log_w_BxC - new_max_B[:, None]), axis=-1)
    return (new_max_B, sum_B), None

  init = (jnp.full((batch,), -jnp.inf), jnp.zeros((batch,)))
  starts = jnp.arange(num_chunks, dtype=jnp.uint32) * chunk_size
  (max_B, sum_B), _ = jax.lax.scan(add_chunk, init, starts)
  return max_B + jnp.log(sum_B) - math.log(num_importance)


def address_summary(address: vma_model.Address, memory_labels_BxT,
                    x_label_B) -> dict[str, jax.Array]:
  """Per episode: KL(q(a|x,M) || p(a)) and H[q(a|x,M)] (nats), and the mass q(a|x,M) puts on
  the memory slots of the target's class and on the read's learned slots."""
  memory_size = address.memory_size
  q_BxS = jax.nn.softmax(address.logits_BxS.astype(jnp.float32), axis=-1)
  kl_B = address_kl(address.logits_BxS)
  same_class_BxT = memory_labels_BxT[:, :memory_size] == x_label_B[:, None]
  return {
      "address_kl": kl_B,
      "address_entropy": math.log(q_BxS.shape[-1]) - kl_B,
      "mass_target_class": jnp.sum(jnp.where(same_class_BxT, q_BxS[:, :memory_size], 0.0),
                                   axis=-1),
      "mass_dummy": jnp.sum(q_BxS[:, memory_size:], axis=-1),
  }


def make_loss_fn(config, model: vma_model.Read) -> Callable:
  """loss_fn(params, episodes, key) -> (loss, (address, weights)): loss = -mean_B
  vimco_surrogate, with the model's `Address` (or None) and `LogWeights` for `step_metrics`."""
  num_importance = config.objective.num_importance
  baseline = config.objective.baseline

  def loss_fn(params, episodes, key):
    x_BxHxW, memory_BxTxHxW = episodes.x_BxHxW, episodes.memory_BxTxHxW
    # One key per episode, then one per (episode, sample), as in evaluation.
    keys_BxK = vma_model.sample_keys(
        jax.random.split(key, x_BxHxW.shape[0]), 0, num_importance)
    # With K < T, e runs on the K sampled slots only, not on all T.
    embed_slots = vma_model.embed_every_slot(memory_BxTxHxW.shape[1], num_importance)
    encoding = model.apply(params, x_BxHxW, memory_BxTxHxW, embed_slots=embed_slots,
                           distinct=episodes.distinct, method="encode")
    weights = model.apply(params, x_BxHxW, encoding, keys_BxK, method="log_weights")
    address = model.apply(params, encoding, method="address")
    surrogate_B = vimco_surrogate(weights.log_w_BxK, weights.log_q_a_BxK, baseline)
    return -jnp.mean(surrogate_B), (address, weights)

  return loss_fn


def step_metrics(episodes, address: vma_model.Address | None,
                 weights: vma_model.LogWeights) -> dict:
  """Scalar summaries of one batch: the bound, its terms, where the samples address (for a
  read with an address), and whether the batch's distinct images did not fit (h then ran on
  more rows, `vma_jax.reads.slots`)."""
  bound_B = iw_bound(weights.log_w_BxK)
  rows = episodes.distinct
  fallback = jnp.zeros((), bool) if rows is None else ~distinct_lib.fits(rows)
  metrics = {
      "bound": jnp.mean(bound_B),  # L_K, nats per image
      "neg_bound": -jnp.mean(bound_B),  # -L_K, the number reported (lower is better)
      "kl_z": jnp.mean(weights.kl_z_BxK),  # log q(z|x,m_a) - log p(z|m_a), sample estimate
      "log_px": jnp.mean(weights.log_px_BxK),  # log p(x|z,m_a)
      # Logged as its mean: the fraction of steps whose distinct images did not fit.
      "distinct_fallback": fallback.astype(jnp.float32),
  }
  if address is None:
    return metrics
  # The same summary as evaluation's; XLA drops the parts not used here.
  summary = address_summary(address, episodes.memory_labels_BxT, episodes.x_label_B)
  metrics["address_kl"] = jnp.mean(summary["address_kl"])  # KL(q(a|x,M) || p(a))
  metrics["address_entropy"] = jnp.mean(summary["address_entropy"])  # H[q(a|x,M)]
  if weights.a_BxK is not None:
    memory_size, a_BxK = address.memory_size, weights.a_BxK
    is_dummy_BxK = a_BxK >= memory_size
    if memory_size:
      label_BxK = jnp.take_along_axis(
          episodes.memory_labels_BxT, jnp.clip(a_BxK, 0, memory_size - 1), axis=1)
      same_class_BxK = ~is_dummy_BxK & (label_BxK == episodes.x_label_B[:, None])
    else:
      same_class_BxK = jnp.zeros_like(is_dummy_BxK)
    metrics["frac_dummy"] = jnp.mean(is_dummy_BxK.astype(jnp.float32))
    metrics["frac_same_class"] = jnp.mean(same_class_BxK.astype(jnp.float32))
  return metrics
