"""The objective on references: a closed-form marginal likelihood, numpy, the unchunked bound.

Also one optimisation step of the full VMA model on its VIMCO loss.
"""

import functools
import math
import types

import jax


import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from scipy import special, stats  # noqa: E402

from vma_jax import model as vma_model  # noqa: E402
from vma_jax import objective  # noqa: E402


# Linear-Gaussian model: z ~ N(0, 1), x | z ~ N(A z + B, S^2), so p(x) = N(x; B, A^2 + S^2) and
# p(z | x) is Gaussian. The proposal q(z) is deliberately off: shifted and too wide.
A, B, S, X = 2.0, 0.5, 0.7, 1.8
POSTERIOR_VAR = S**2 / (A**2 + S**2)
POSTERIOR_MEAN = A * (X - B) / (A**2 + S**2)
PROPOSAL_MEAN, PROPOSAL_STD = POSTERIOR_MEAN + 0.5, 1.5 * math.sqrt(POSTERIOR_VAR)
LOG_MARGINAL = stats.norm.logpdf(X, B, math.sqrt(A**2 + S**2))
NUM_REPLICAS = 4000


@functools.partial(jax.jit, static_argnums=1)
def _linear_gaussian_bounds(key, num_importance):
  """L_K of NUM_REPLICAS independent sets of K samples from the proposal."""
  z_RxK = PROPOSAL_MEAN + PROPOSAL_STD * jax.random.normal(key, (NUM_REPLICAS, num_importance))
  norm = jax.scipy.stats.norm
  log_w_RxK = (norm.logpdf(z_RxK) + norm.logpdf(X, A * z_RxK + B, S)
               - norm.logpdf(z_RxK, PROPOSAL_MEAN, PROPOSAL_STD))
  return objective.iw_bound(log_w_RxK)


def _mean_and_stderr(values):
  values = np.asarray(values, np.float64)
  return values.mean(), values.std(ddof=1) / math.sqrt(values.size)


def test_one_sample_bound_is_the_closed_form_elbo():
  """E[L_1] = log p(x) - KL(q(z) || p(z|x)), both in closed form."""
  kl = (math.log(math.sqrt(POSTERIOR_VAR) / PROPOSAL_STD)
        + (PROPOSAL_STD**2 + (PROPOSAL_MEAN - POSTERIOR_MEAN)**2) / (2 * POSTERIOR_VAR) - 0.5)
  mean, stderr = _mean_and_stderr(_linear_gaussian_bounds(jax.random.key(0), 1))
  assert abs(mean - (LOG_MARGINAL - kl)) < 5 * stderr


def test_iw_bound_is_below_log_marginal_and_increases_with_k():
  """E[L_K] <= log p(x), increasing in K, and within 0.01 nats of log p(x) at K = 1000."""
  means = []
  for i, num_importance in enumerate([1, 5, 50, 1000]):
    mean, stderr = _mean_and_stderr(_linear_gaussian_bounds(jax.random.key(i), num_importance))
    assert mean < LOG_MARGINAL + 3 * stderr, num_importance
    means.append((mean, stderr))
  for (low, low_err), (high, high_err) in zip(means[:-1], means[1:]):
    assert high - low > 3 * math.hypot(low_err, high_err)
  assert LOG_MARGINAL - means[-1][0] < 0.01
  assert LOG_MARGINAL - means[0][0] > 0.1  # the proposal is imperfect: the test can fail


def test_iw_bound_is_log_mean_exp():
  """L_K = log((1/K) sum_k w_k), by scipy.special.logsumexp in float64."""
  log_w_BxK = np.random.default_rng(0).normal(scale=30.0, size=(3, 6))
  np.testing.assert_allclose(
      objective.iw_bound(jnp.asarray(log_w_BxK, jnp.float32)),
      special.logsumexp(log_w_BxK, axis=-1) - math.log(6), rtol=1e-6)


def test_address_kl_matches_numpy():
  """KL(q(a|x,M) || Uniform(S)) = sum_i q_i log(q_i S), computed directly in numpy."""
  logits_BxS = np.random.default_rng(1).normal(scale=4.0, size=(4, 9))
  q_BxS = np.exp(logits_BxS - logits_BxS.max(-1, keepdims=True))
  q_BxS /= q_BxS.sum(-1, keepdims=True)
  expected_B = np.sum(q_BxS * np.log(q_BxS * 9), axis=-1)
  np.testing.assert_allclose(
      objective.address_kl(jnp.asarray(logits_BxS, jnp.float32)), expected_B,
      rtol=1e-4, atol=1e-6)


def test_address_kl_is_zero_for_uniform_logits():
  logits_BxS = jnp.full((3, 5), 2.5).at[1].set(-7.0)
  np.testing.assert_allclose(objective.address_kl(logits_BxS), np.zeros(3), atol=1e-6)


# Tests on the full VMA model.


def _episodes(batch, memory_size, seed=0):
  rng = np.random.default_rng(seed)
  x_BxHxW = rng.integers(0, 2, (batch, 26, 26)).astype(np.float32)
  memory_BxTxHxW = rng.integers(0, 2, (batch, memory_size, 26, 26)).astype(np.float32)
  return x_BxHxW, memory_BxTxHxW, jax.random.split(jax.random.key(seed), batch)


@functools.cache
def _model_and_variables():
  """Default VMA and variables drawn in numpy: kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2).

  The kernel scale of Flax's lecun_normal, without compiling the Flax initialisers (slow on
  CPU). Biases are not zero (unlike param_init="flax") so that the blank dummies are not in
  the exactly-zero, ReLU-dead state they would have at step 0, with an exactly zero gradient.
  """
  model = vma_model.VMA()
  x_BxHxW, memory_BxTxHxW, episode_keys_B = _episodes(1, 1)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x_BxHxW, memory_BxTxHxW,
                          vma_model.sample_keys(episode_keys_B, 0, 1))
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      fan_in = math.prod(leaf.shape[:-1])
      return rng.normal(scale=1.0 / math.sqrt(fan_in), size=leaf.shape).astype(np.float32)
    if jax.tree_util.keystr(path).endswith("['bias']"):
      return rng.normal(scale=0.1, size=leaf.shape).astype(np.float32)
    return np.zeros(leaf.shape, np.float32)

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def _unchunked_bound(model, num_importance):
  """iw_bound of the samples of sample_keys(episode_keys_B, 0, K), in one pass."""

  def bound(variables, x_BxHxW, memory_BxTxHxW, episode_keys_B):
    keys_BxK = vma_model.sample_keys(episode_keys_B, 0, num_importance)
    out = model.apply(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
    return objective.iw_bound(out.log_w_BxK)

  return jax.jit(bound)


@pytest.mark.parametrize("chunk_size", [3, 5])
def test_streaming_bound_equals_unchunked_bound(chunk_size):
  """Chunks that do (5) and do not (3) divide K = 10 give the bound of the same samples."""
  model, variables = _model_and_variables()
  x_BxHxW, memory_BxTxHxW, episode_keys_B = _episodes(2, 2)
  num_importance = 10
  streaming = jax.jit(functools.partial(
      objective.streaming_bound, model.apply, num_importance=num_importance, chunk_size=chunk_size))
  bound_B = streaming(variables, x_BxHxW, memory_BxTxHxW, episode_keys_B)
  expected_B = _unchunked_bound(model, num_importance)(
      variables, x_BxHxW, memory_BxTxHxW, episode_keys_B)
  assert bound_B.shape == (2,)
  np.testing.assert_allclose(bound_B, expected_B, rtol=1e-6)


def test_streaming_bound_memory_does_not_grow_with_k():
  """XLA's temp buffers for K = 1000 are those for K = 100 at the same chunk size."""
  model, variables = _model_and_variables()
  x_BxHxW, memory_BxTxHxW, episode_keys_B = _episodes(2, 2)

  def temp_bytes(num_importance):
    streaming = jax.jit(functools.partial(
        objective.streaming_bound, model.apply, num_importance=num_importance, chunk_size=10))
    compiled = streaming.lower(variables, x_BxHxW, memory_BxTxHxW, episode_keys_B).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(100), temp_bytes(1000)
  # A decoder pass over all K samples at once would need > 2 * 1000 * 13 * 13 * 48 * 4 bytes.
  assert large <= 1.05 * small + 4096, (small, large)


@functools.cache
def _loss_and_grad(model, baseline):
  """-mean_b L_K through the VIMCO surrogate, and its gradient."""

  def loss(variables, x_BxHxW, memory_BxTxHxW, keys_BxK):
    out = model.apply(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
    return -jnp.mean(objective.vimco_surrogate(out.log_w_BxK, out.log_q_a_BxK, baseline))

  return jax.jit(jax.value_and_grad(loss))


@pytest.mark.slow
def test_adam_step_lowers_the_loss_of_a_fixed_batch():
  """One optax.adam step on random binary episodes lowers -L_K at the same samples."""
  model, variables = _model_and_variables()
  x_BxHxW, memory_BxTxHxW, episode_keys_B = _episodes(2, 3, seed=1)
  keys_BxK = vma_model.sample_keys(episode_keys_B, 0, 4)
  loss_and_grad = _loss_and_grad(model, "arithmetic")
  loss_before, grads = loss_and_grad(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  optimizer = optax.adam(1e-3)
  updates, _ = optimizer.update(grads, optimizer.init(variables), variables)
  loss_after, _ = loss_and_grad(
      optax.apply_updates(variables, updates), x_BxHxW, memory_BxTxHxW, keys_BxK)
  assert np.isfinite(loss_before) and np.isfinite(loss_after)
  assert loss_after < loss_before - 1.0, (loss_before, loss_after)


def test_gradient_reaches_every_parameter():
  """Encoders, heads, decoder, address network (through VIMCO) and dummies all learn."""
  model, variables = _model_and_variables()
  x_BxHxW, memory_BxTxHxW, episode_keys_B = _episodes(2, 3, seed=1)
  keys_BxK = vma_model.sample_keys(episode_keys_B, 0, 4)
  _, grads = _loss_and_grad(model, "arithmetic")(
      variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)), jax.tree_util.keystr(path)
    assert np.any(grad != 0), jax.tree_util.keystr(path)


def test_without_a_score_term_the_surrogate_is_the_bound():
  """A read without a discrete choice (log_q_a_BxK None): the surrogate is L_K itself."""
  log_w_BxK = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
  np.testing.assert_array_equal(objective.vimco_surrogate(log_w_BxK, None),
                                objective.iw_bound(log_w_BxK))


def test_address_summary_of_a_read_that_addresses_only_its_learned_slots():
  address = vma_model.Address(jnp.zeros((2, 2)), memory_size=0)
  summary = objective.address_summary(address, jnp.array([[0, 1, 1], [1, 1, 0]]),
                                      jnp.array([1, 0]))
  np.testing.assert_allclose(summary["mass_dummy"], 1.0)
  np.testing.assert_array_equal(summary["mass_target_class"], 0.0)
  np.testing.assert_allclose(summary["address_kl"] + summary["address_entropy"], math.log(2))


def test_step_metrics_have_the_address_and_slot_summaries_of_a_read_that_has_them():
  episodes = types.SimpleNamespace(memory_labels_BxT=jnp.array([[0, 1, 1]]),
                                   x_label_B=jnp.array([1]), distinct=None)
  weights = vma_model.LogWeights(
      log_w_BxK=jnp.zeros((1, 2)), log_px_BxK=jnp.zeros((1, 2)), kl_z_BxK=jnp.zeros((1, 2)),
      logits_BxKxHxW=jnp.zeros((1, 2, 4, 4)))
  plain = {"bound", "neg_bound", "kl_z", "log_px", "distinct_fallback"}
  assert set(objective.step_metrics(episodes, None, weights)) == plain
  address = vma_model.Address(jnp.zeros((1, 5)), memory_size=3)
  metrics = objective.step_metrics(episodes, address, weights)
  assert set(metrics) == plain | {"address_kl", "address_entropy"}
  # Slot 1 holds the target's class, slot 4 is a learned one.
  metrics = objective.step_metrics(episodes, address, weights._replace(a_BxK=jnp.array([[1, 4]])))
  assert float(metrics["frac_same_class"]) == float(metrics["frac_dummy"]) == 0.5
