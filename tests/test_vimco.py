"""The VIMCO estimator: unbiasedness by exact enumeration, baselines against TFP, stability."""

import itertools
import math

import jax


import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_probability.substrates.numpy import stats as tfp_stats  # noqa: E402

from vma_jax import objective  # noqa: E402

# A toy model small enough to enumerate: a ~ q = softmax(theta) over S = 3 values, a fixed
# log p(x, a), K = 3 samples, log w_k = log p(x, a_k) - log q(a_k). q is far from the
# posterior p(a | x), so that the score term carries most of the gradient.
NUM_VALUES = 3
NUM_SAMPLES = 3
LOG_JOINT_S = jnp.array([-0.5, -4.0, -2.0])
THETA_S = jnp.array([-1.0, 1.0, 0.2])
NUM_DRAWS = 20_000

# Jitted once here: op-by-op dispatch of these small functions is slower than compiling them.
iw_bound = jax.jit(objective.iw_bound)
leave_one_out_bounds = jax.jit(objective.leave_one_out_bounds, static_argnames="baseline")
vimco_surrogate = jax.jit(objective.vimco_surrogate, static_argnames="baseline")


def _exact_expected_bound(theta_S):
  """E_q[L_K] by summing over all S^K tuples (a_1 .. a_K); independent of `objective`."""
  tuples_NxK = jnp.array(list(itertools.product(range(NUM_VALUES), repeat=NUM_SAMPLES)))
  log_q_S = jax.nn.log_softmax(theta_S)
  log_q_NxK = log_q_S[tuples_NxK]
  log_w_NxK = LOG_JOINT_S[tuples_NxK] - log_q_NxK
  bound_N = jax.nn.logsumexp(log_w_NxK, axis=-1) - math.log(NUM_SAMPLES)
  return jnp.sum(jnp.exp(log_q_NxK.sum(-1)) * bound_N)


def _toy_log_weights(theta_S, key):
  """One draw of K addresses from q_theta: (log_w_1xK, log_q_a_1xK), differentiable in theta."""
  a_K = jax.random.categorical(key, theta_S, shape=(NUM_SAMPLES,))
  log_q_a_K = jax.nn.log_softmax(theta_S)[a_K]
  log_w_K = LOG_JOINT_S[a_K] - log_q_a_K
  return log_w_K[None], log_q_a_K[None]


def _vimco_grad(theta_S, key, baseline):
  return jax.grad(lambda t: objective.vimco_surrogate(
      *_toy_log_weights(t, key), baseline=baseline)[0])(theta_S)


def _naive_grad(theta_S, key):
  """Gradient of L_K through log w only: no score term for the discrete choice."""
  return jax.grad(lambda t: objective.iw_bound(_toy_log_weights(t, key)[0])[0])(theta_S)


def _mean_and_stderr(grads_NxS):
  grads_NxS = np.asarray(grads_NxS, np.float64)
  return grads_NxS.mean(0), grads_NxS.std(0, ddof=1) / math.sqrt(grads_NxS.shape[0])


@pytest.mark.parametrize("baseline", objective.BASELINES)
def test_vimco_gradient_is_unbiased(baseline):
  """Mean of VIMCO gradients over many draws = exact gradient of E[L_K] by enumeration."""
  exact_S = np.asarray(jax.grad(_exact_expected_bound)(THETA_S))
  keys_N = jax.random.split(jax.random.key(0), NUM_DRAWS)
  grads_NxS = jax.jit(jax.vmap(lambda k: _vimco_grad(THETA_S, k, baseline)))(keys_N)
  mean_S, stderr_S = _mean_and_stderr(grads_NxS)
  assert np.all(np.isfinite(mean_S))
  assert np.max(np.abs(exact_S)) > 0.1, "the toy gradient should not be trivially small"
  assert np.max(np.abs(mean_S)) > 0.1, "the estimator should not be trivially zero"
  np.testing.assert_array_less(np.abs(mean_S - exact_S), 5 * stderr_S)


def test_gradient_without_score_term_is_biased():
  """Dropping the score term (reparameterised part only) misses E[L_K]'s gradient."""
  exact_S = np.asarray(jax.grad(_exact_expected_bound)(THETA_S))
  keys_N = jax.random.split(jax.random.key(1), NUM_DRAWS)
  grads_NxS = jax.jit(jax.vmap(lambda k: _naive_grad(THETA_S, k)))(keys_N)
  mean_S, stderr_S = _mean_and_stderr(grads_NxS)
  assert np.max(np.abs(mean_S - exact_S) / stderr_S) > 20


@pytest.mark.parametrize("baseline", objective.BASELINES)
def test_vimco_surrogate_value_is_the_bound(baseline):
  """The surrogate's value is L_K: the score term is zero in value."""
  rng = np.random.default_rng(2)
  log_w_BxK = rng.normal(scale=3.0, size=(4, 5)).astype(np.float32)
  log_q_a_BxK = -rng.uniform(0.0, 2.0, size=(4, 5)).astype(np.float32)
  np.testing.assert_allclose(
      vimco_surrogate(log_w_BxK, log_q_a_BxK, baseline=baseline),
      iw_bound(log_w_BxK), rtol=1e-6)


@pytest.mark.parametrize("baseline", objective.BASELINES)
def test_vimco_surrogate_gradient_matches_formula(baseline):
  """d/d log w_k = softmax(log w)_k; d/d log q(a_k) = L_K - L^{-k}, with L^{-k} from TFP."""
  rng = np.random.default_rng(4)
  log_w_BxK = rng.normal(scale=2.0, size=(3, 4))
  log_q_a_BxK = -np.abs(rng.normal(size=(3, 4)))
  grad_w, grad_q = jax.jit(jax.grad(
      lambda w, q: objective.vimco_surrogate(w, q, baseline).sum(), argnums=(0, 1)))(
          jnp.asarray(log_w_BxK, jnp.float32), jnp.asarray(log_q_a_BxK, jnp.float32))
  reference = {"arithmetic": tfp_stats.log_loomean_exp,
               "geometric": tfp_stats.log_soomean_exp}[baseline]
  loo_BxK, bound_B = reference(log_w_BxK, axis=-1)
  np.testing.assert_allclose(
      grad_w, np.exp(log_w_BxK - bound_B[:, None]) / log_w_BxK.shape[-1], rtol=1e-5)
  np.testing.assert_allclose(grad_q, bound_B[:, None] - loo_BxK, rtol=1e-4, atol=1e-5)


def test_iw_bound_matches_tfp_log_mean_exp():
  """L_K = log mean_k w_k, as TFP's leave-one-out helpers report it."""
  log_w_BxK = np.random.default_rng(6).normal(scale=4.0, size=(5, 7))
  _, bound_B = tfp_stats.log_loomean_exp(log_w_BxK, axis=-1)
  np.testing.assert_allclose(
      iw_bound(jnp.asarray(log_w_BxK, jnp.float32)), bound_B, rtol=1e-5)


@pytest.mark.parametrize("num_importance", [2, 3, 8])
def test_arithmetic_baseline_matches_tfp_log_loomean_exp(num_importance):
  """L^{-k} = log mean_{j != k} w_j: tfp.stats.log_loomean_exp."""
  log_w_BxK = np.random.default_rng(num_importance).normal(scale=5.0, size=(4, num_importance))
  expected_BxK, _ = tfp_stats.log_loomean_exp(log_w_BxK, axis=-1)
  loo_BxK = leave_one_out_bounds(jnp.asarray(log_w_BxK, jnp.float32), baseline="arithmetic")
  assert loo_BxK.shape == log_w_BxK.shape
  np.testing.assert_allclose(loo_BxK, expected_BxK, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_importance", [2, 3, 8])
def test_geometric_baseline_matches_tfp_log_soomean_exp(num_importance):
  """w_k swapped for the geometric mean of the others: tfp.stats.log_soomean_exp."""
  log_w_BxK = np.random.default_rng(10 + num_importance).normal(scale=5.0, size=(4, num_importance))
  expected_BxK, _ = tfp_stats.log_soomean_exp(log_w_BxK, axis=-1)
  loo_BxK = leave_one_out_bounds(jnp.asarray(log_w_BxK, jnp.float32), baseline="geometric")
  assert loo_BxK.shape == log_w_BxK.shape
  np.testing.assert_allclose(loo_BxK, expected_BxK, rtol=1e-5, atol=1e-5)


def test_leave_one_out_bounds_reject_bad_arguments():
  """K = 1 has no leave-one-out baseline; unknown baselines are an error."""
  with pytest.raises(ValueError, match="K >= 2"):
    objective.leave_one_out_bounds(jnp.zeros((2, 1)))
  with pytest.raises(ValueError, match="unknown VIMCO baseline"):
    objective.leave_one_out_bounds(jnp.zeros((2, 3)), "harmonic")


@pytest.mark.parametrize("baseline", objective.BASELINES)
@pytest.mark.parametrize("num_importance", [2, 4])
def test_vimco_surrogate_is_finite_with_a_negligible_weight(baseline, num_importance):
  """One log w is 1e4 below the others: value and gradients stay finite."""
  log_w_BxK = np.zeros((2, num_importance), np.float32)
  log_w_BxK[:, 0] = -1e4
  log_w_BxK[1] -= 300.0  # the second episode is far from 0 as a whole
  log_q_a_BxK = np.full((2, num_importance), -1.0, np.float32)
  value_B, (grad_w, grad_q) = jax.jit(jax.vmap(jax.value_and_grad(
      lambda w, q: objective.vimco_surrogate(w[None], q[None], baseline)[0],
      argnums=(0, 1))))(log_w_BxK, log_q_a_BxK)
  for array in (value_B, grad_w, grad_q):
    assert np.all(np.isfinite(array)), array
  # The negligible sample gets no weight; the weights of the others sum to one.
  np.testing.assert_allclose(grad_w[:, 0], 0.0, atol=1e-6)
  np.testing.assert_allclose(grad_w.sum(-1), 1.0, rtol=1e-5)
