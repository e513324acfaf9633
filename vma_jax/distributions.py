"""Log-densities used by the model, summed over event dimensions.

All functions are elementwise-stable in float32 and broadcast over leading axes.
"""

import math

import jax
import jax.numpy as jnp

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(z, mean, stddev):
  """log N(z; mean, diag(stddev^2)), summed over the last axis."""
  zscore = (z - mean) / stddev
  log_prob = -0.5 * jnp.square(zscore) - jnp.log(stddev) - 0.5 * _LOG_2PI
  return jnp.sum(log_prob, axis=-1)


def gaussian_sample(key, mean, stddev):
  """z = mean + stddev * eps, eps ~ N(0, I): the reparameterised sample."""
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + stddev * eps


def bernoulli_log_prob(x, logits, event_ndims=2):
  """log Bernoulli(x; sigmoid(logits)), summed over the last `event_ndims` axes.

  Computed as x * l - softplus(l), exact for x in {0, 1} and stable for any l.
  """
  log_prob = x * logits - jax.nn.softplus(logits)
  return jnp.sum(log_prob, axis=tuple(range(-event_ndims, 0)))


def categorical_log_probs(logits):
  """log softmax over the last axis."""
  return jax.nn.log_softmax(logits, axis=-1)


def categorical_kl_to_uniform(logits):
  """KL(softmax(logits) || Uniform(S)) = log S - H(q), over the last axis of size S."""
  log_q = jax.nn.log_softmax(logits, axis=-1)
  num_slots = logits.shape[-1]
  return jnp.sum(jnp.exp(log_q) * log_q, axis=-1) + math.log(num_slots)


def categorical_entropy(logits):
  """H(softmax(logits)) over the last axis, in nats."""
  log_q = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_q) * log_q, axis=-1)
