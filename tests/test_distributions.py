"""Log-densities of `vma_jax.distributions`, checked against scipy and numpy."""

import jax


import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import special, stats  # noqa: E402

from vma_jax import distributions  # noqa: E402


def test_gaussian_log_prob_matches_scipy():
  """Sum over the last axis of scipy.stats.norm.logpdf."""
  rng = np.random.default_rng(0)
  z_BxKxZ = rng.normal(size=(3, 4, 5)).astype(np.float32)
  mean_BxKxZ = rng.normal(size=(3, 4, 5)).astype(np.float32)
  stddev_BxKxZ = rng.uniform(0.1, 3.0, size=(3, 4, 5)).astype(np.float32)
  expected_BxK = stats.norm.logpdf(z_BxKxZ, mean_BxKxZ, stddev_BxKxZ).sum(-1)
  log_prob_BxK = distributions.gaussian_log_prob(z_BxKxZ, mean_BxKxZ, stddev_BxKxZ)
  assert log_prob_BxK.shape == (3, 4)
  np.testing.assert_allclose(log_prob_BxK, expected_BxK, rtol=1e-5, atol=1e-4)


def test_gaussian_sample_is_reparameterised():
  """z = mean + stddev * eps with eps the standard normal of the same key."""
  key = jax.random.key(0)
  mean_Z = jnp.arange(4.0)
  stddev_Z = jnp.array([0.5, 1.0, 2.0, 3.0])
  z_Z = distributions.gaussian_sample(key, mean_Z, stddev_Z)
  eps_Z = jax.random.normal(key, (4,))
  np.testing.assert_allclose(z_Z, mean_Z + stddev_Z * eps_Z, rtol=1e-6)
  # The sample's derivatives are those of the reparameterisation: dz/dmean = 1, dz/dstd = eps.
  dz_dstd = jax.grad(lambda s: distributions.gaussian_sample(key, mean_Z, s).sum())(stddev_Z)
  np.testing.assert_allclose(dz_dstd, eps_Z, rtol=1e-6)


def test_bernoulli_log_prob_matches_scipy():
  """Sum over the image of scipy.stats.bernoulli.logpmf(x, sigmoid(logits))."""
  rng = np.random.default_rng(1)
  x_BxHxW = rng.integers(0, 2, size=(2, 5, 6)).astype(np.float32)
  logits_BxHxW = rng.normal(scale=3.0, size=(2, 5, 6)).astype(np.float32)
  probs = special.expit(logits_BxHxW.astype(np.float64))
  expected_B = stats.bernoulli.logpmf(x_BxHxW, probs).sum(axis=(-2, -1))
  log_prob_B = distributions.bernoulli_log_prob(x_BxHxW, logits_BxHxW)
  assert log_prob_B.shape == (2,)
  np.testing.assert_allclose(log_prob_B, expected_B, rtol=1e-5)


def test_bernoulli_log_prob_event_ndims():
  """event_ndims=1 sums over the last axis only."""
  rng = np.random.default_rng(2)
  x_BxN = rng.integers(0, 2, size=(3, 7)).astype(np.float32)
  logits_BxN = rng.normal(size=(3, 7)).astype(np.float32)
  expected_B = stats.bernoulli.logpmf(x_BxN, special.expit(logits_BxN)).sum(-1)
  np.testing.assert_allclose(
      distributions.bernoulli_log_prob(x_BxN, logits_BxN, event_ndims=1), expected_B,
      rtol=1e-5)


@pytest.mark.parametrize("logit", [-200.0, -50.0, 50.0, 200.0])
def test_bernoulli_log_prob_is_stable_for_saturated_logits(logit):
  """Saturated logits give the analytic limits -softplus(-l), -softplus(l), never NaN/inf."""
  logits = jnp.full((1, 1), logit)
  log_p1 = distributions.bernoulli_log_prob(jnp.ones((1, 1)), logits)
  log_p0 = distributions.bernoulli_log_prob(jnp.zeros((1, 1)), logits)
  np.testing.assert_allclose(log_p1, -np.logaddexp(0.0, -logit), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(log_p0, -np.logaddexp(0.0, logit), rtol=1e-6, atol=1e-6)
  grad = jax.grad(lambda l: distributions.bernoulli_log_prob(jnp.ones((1, 1)), l))(logits)
  assert np.all(np.isfinite(grad))


def test_categorical_log_probs_normalise():
  """log softmax: exp sums to one and equals scipy.special.log_softmax."""
  rng = np.random.default_rng(3)
  logits_BxS = rng.normal(scale=5.0, size=(4, 6)).astype(np.float32)
  log_q_BxS = distributions.categorical_log_probs(logits_BxS)
  np.testing.assert_allclose(log_q_BxS, special.log_softmax(logits_BxS, axis=-1), atol=1e-5)
  np.testing.assert_allclose(np.exp(log_q_BxS).sum(-1), np.ones(4), rtol=1e-6)


def test_categorical_kl_to_uniform_and_entropy_match_scipy():
  """KL(q || Uniform(S)) = log S - H(q), with H from scipy.stats.entropy."""
  rng = np.random.default_rng(4)
  logits_BxS = rng.normal(scale=3.0, size=(5, 7)).astype(np.float32)
  q_BxS = special.softmax(logits_BxS.astype(np.float64), axis=-1)
  entropy_B = stats.entropy(q_BxS, axis=-1)
  kl_B = stats.entropy(q_BxS, np.full_like(q_BxS, 1.0 / 7), axis=-1)
  np.testing.assert_allclose(distributions.categorical_entropy(logits_BxS), entropy_B, rtol=1e-5)
  np.testing.assert_allclose(
      distributions.categorical_kl_to_uniform(logits_BxS), kl_B, rtol=1e-4, atol=1e-6)
