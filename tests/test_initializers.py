"""Initial values: PyTorch's default layer init (the reference's) and Flax's.

Reference: the PyTorch layer behind each parameter of the reference implementation
(docs/model.md, Networks), and PyTorch's rule for its default init, kernel and bias ~
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_features (Linear), Cin*k*k (Conv2d) and
Cout*k*k (ConvTranspose2d, whose weight is Cin x Cout x k x k and whose fan-in PyTorch reads
off the second axis).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vma_jax import initializers
from vma_jax import model as vma_model
from vma_jax import objective


def _linear(n_in, n_out):
  return n_in


def _conv2d(c_in, c_out, k):
  return c_in * k * k


def _conv_transpose2d(c_in, c_out, k):
  return c_out * k * k


def _encoder(out):
  return {"conv1": _conv2d(1, 48, 3), "conv2": _conv2d(48, 48, 3), "conv3": _conv2d(48, 48, 3),
          "conv4": _conv2d(48, 64, 3), "conv5": _conv2d(64, 64, 3), "conv6": _conv2d(64, 64, 3),
          "fc1": _linear(1024, 100), "fc2": _linear(100, out)}


# PyTorch fan-in of each layer of the reference model, by the layer's parameter path.
TORCH_FAN_IN = {
    "embed": _encoder(128), "match": _encoder(200),
    "posterior_mean": _linear(256, 64), "posterior_scale": _linear(256, 64),
    "prior_mean": _linear(128, 64), "prior_scale": _linear(128, 64),
    "memory_code": _linear(128, 64),
    "decoder": {
        "fc1": _linear(128, 256), "fc2": _linear(256, 1024),
        "tconv1": _conv_transpose2d(64, 64, 3), "tconv2": _conv_transpose2d(128, 64, 3),
        "tconv3": _conv_transpose2d(64, 64, 3), "tconv4": _conv_transpose2d(112, 48, 3),
        "tconv5": _conv_transpose2d(48, 48, 3), "tconv6": _conv_transpose2d(48, 48, 3),
        "tconv7": _conv_transpose2d(48, 1, 2)},
}


@functools.cache
def _initial_params(param_init):
  model = vma_model.VMA(param_init=param_init)
  x_BxHxW = jnp.zeros((1, 26, 26))
  memory_BxTxHxW = jnp.zeros((1, 1, 26, 26))
  keys_BxK = jax.random.split(jax.random.key(0), (1, 1))
  params = jax.jit(model.init)(jax.random.key(3), x_BxHxW, memory_BxTxHxW, keys_BxK)["params"]
  return jax.tree.map(np.asarray, params)


def _layers(tree, prefix=()):
  """(path, {"kernel": ..., "bias": ...}) of every layer in a parameter tree."""
  if "kernel" in tree:
    yield prefix, tree
    return
  for name, sub in tree.items():
    if isinstance(sub, dict):
      yield from _layers(sub, prefix + (name,))


def test_torch_init_draws_every_layer_uniformly_within_pytorchs_bound():
  params = _initial_params("torch")
  layers = dict(_layers(params))
  assert len(layers) == 2 * 8 + 5 + 9  # two encoders, five heads, the decoder's nine layers
  for path, layer in layers.items():
    fan_in = functools.reduce(lambda tree, name: tree[name], path, TORCH_FAN_IN)
    bound = 1.0 / math.sqrt(fan_in)
    for name, values in layer.items():
      where = "/".join(path + (name,))
      assert np.all(np.abs(values) <= bound), where
      if values.size >= 1000:  # a uniform sample fills its interval
        assert np.max(np.abs(values)) > 0.99 * bound, where
        assert abs(np.std(values) / (bound / math.sqrt(3)) - 1) < 0.05, where
        assert abs(np.mean(values)) < 0.1 * bound, where
      else:
        assert np.max(np.abs(values)) > 0.3 * bound, where  # biases are not zero
  np.testing.assert_array_equal(params["dummies"], 0.0)  # docs/model.md: blank dummies


def test_flax_init_has_lecun_normal_kernels_and_zero_biases():
  params = _initial_params("flax")
  for path, layer in _layers(params):
    where = "/".join(path)
    np.testing.assert_array_equal(layer["bias"], 0.0, err_msg=where)
    kernel = layer["kernel"]
    if kernel.size >= 1000:
      fan_in = math.prod(kernel.shape[:-1])  # Flax: every axis but the output's
      # lecun_normal is a normal truncated at 2 sigma, rescaled to variance 1 / fan_in.
      assert abs(np.std(kernel) * math.sqrt(fan_in) - 1) < 0.06, where
      assert np.max(np.abs(kernel)) <= 2 * 1.14 / math.sqrt(fan_in), where
  np.testing.assert_array_equal(params["dummies"], 0.0)


def test_the_two_inits_differ_and_are_deterministic():
  torch_params, flax_params = _initial_params("torch"), _initial_params("flax")
  assert jax.tree.map(jnp.shape, torch_params) == jax.tree.map(jnp.shape, flax_params)
  kernel = lambda p: p["decoder"]["tconv7"]["kernel"]
  assert not np.allclose(kernel(torch_params), kernel(flax_params))
  _initial_params.cache_clear()
  np.testing.assert_array_equal(kernel(_initial_params("torch")), kernel(torch_params))


@pytest.mark.parametrize("param_init, moves", [("torch", True), ("flax", False)])
def test_blank_dummies_learn_from_the_first_step_under_pytorchs_init(param_init, moves):
  """The dummies start blank. With PyTorch's init (non-zero biases) the VIMCO loss has a
  gradient in them from step 1, as in the reference; with Flax's zero biases every unit of
  h(0) and e(0) sits at the ReLU's kink and their gradient is exactly zero."""
  model = vma_model.VMA(param_init=param_init)
  rng = np.random.default_rng(0)
  x_BxHxW = jnp.asarray(rng.integers(0, 2, (2, 26, 26)), jnp.float32)
  memory_BxTxHxW = jnp.asarray(rng.integers(0, 2, (2, 3, 26, 26)), jnp.float32)
  keys_BxK = vma_model.sample_keys(jax.random.split(jax.random.key(1), 2), 0, 4)

  def loss(params):
    w = model.apply({"params": params}, x_BxHxW, memory_BxTxHxW, keys_BxK)
    return -jnp.mean(objective.vimco_surrogate(w.log_w_BxK, w.log_q_a_BxK))

  grad_dummies = jax.jit(jax.grad(loss))(_initial_params(param_init))["dummies"]
  assert np.all(np.isfinite(grad_dummies))
  assert (np.max(np.abs(grad_dummies)) > 1e-6) == moves


def test_unknown_param_init_is_a_clear_error():
  with pytest.raises(ValueError, match=r"config\.model\.param_init must be one of"):
    initializers.layer_kwargs("xavier", 2)
  with pytest.raises(ValueError, match="'xavier'"):
    initializers.layer_init("xavier", 4)
