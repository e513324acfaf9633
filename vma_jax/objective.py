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
estimator, so a loss is simply `-mean(vimco_surrogate(...))`. Every function here is pure in
the log-weights (or the address logits): the model that produces them is `vma_jax.model`, and
the large-K bound computed in chunks of samples is `vma_jax.cells.streaming_bound`. The
derivation is in docs/model.md (The objective; The estimator).
"""

import math
import jax
import jax.numpy as jnp

from vma_jax import distributions
from vma_jax import errors

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
