"""`vma_jax.cpu.layers` against stock Flax: the same parameters and function, layer by layer
and for the whole model; the stock path supports forward-mode differentiation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax.cpu import convolution
from vma_jax.cpu import layers as cpu_layers


def _same_as_flax(layer, reference, x_NxHxWxC, rng):
  """`layer` has the parameters of `reference` and computes its function on them."""
  params = reference.init(jax.random.key(0), x_NxHxWxC)
  assert jax.tree.map(jnp.shape, layer.init(jax.random.key(0), x_NxHxWxC)) == jax.tree.map(
      jnp.shape, params)
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  np.testing.assert_allclose(layer.apply(params, x_NxHxWxC), reference.apply(params, x_NxHxWxC),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_through_conv2d_is_flax_conv(stride):
  """nn.Conv(conv_general_dilated=convolution.conv_general_dilated): nn.Conv's function and
  gradients."""
  rng = np.random.default_rng(0)
  x_NxHxWxC = jnp.asarray(rng.normal(size=(2, 9, 9, 3)), jnp.float32)
  conv = functools.partial(nn.Conv, 4, (3, 3), strides=(stride, stride),
                           padding=((1, 1), (1, 1)))
  layer, reference = conv(conv_general_dilated=convolution.conv_general_dilated), conv()
  _same_as_flax(layer, reference, x_NxHxWxC, rng)
  params = reference.init(jax.random.key(1), x_NxHxWxC)
  grad = lambda module: jax.grad(lambda p, x: jnp.sum(module.apply(p, x) ** 2), (0, 1))(
      params, x_NxHxWxC)
  for got, want in zip(jax.tree.leaves(grad(layer)), jax.tree.leaves(grad(reference))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_hook_falls_back_to_lax_for_what_conv2d_does_not_do():
  """Dilated or grouped convs keep jax.lax's own convolution (the same function)."""
  rng = np.random.default_rng(1)
  x_NxHxWxC = jnp.asarray(rng.normal(size=(2, 9, 9, 4)), jnp.float32)
  conv = functools.partial(nn.Conv, 4, (3, 3), kernel_dilation=(2, 2), feature_group_count=2)
  _same_as_flax(conv(conv_general_dilated=convolution.conv_general_dilated), conv(),
                x_NxHxWxC, rng)


def test_concat_conv_transpose_is_the_flax_layer_on_the_concatenation():
  """conv(y) + project(skip) == nn.ConvTranspose(concat([y, skip])), same parameters."""
  rng = np.random.default_rng(0)
  y_NxHxWxC = jnp.asarray(rng.normal(size=(2, 7, 7, 5)), jnp.float32)
  skip_NxHxWxC = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)
  layer = cpu_layers.ConcatConvTranspose3x3(5, 3, 4)
  reference = nn.ConvTranspose(4, (3, 3), padding=((1, 1), (1, 1)))
  params = reference.init(jax.random.key(0), jnp.zeros((1, 7, 7, 8)))
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  expected = reference.apply(params, jnp.concatenate([y_NxHxWxC, skip_NxHxWxC], axis=-1))
  assert jax.tree.map(jnp.shape, layer.init(
      jax.random.key(0), y_NxHxWxC, jnp.zeros((2, 7, 7, 4)))) == jax.tree.map(jnp.shape, params)
  term = layer.apply(params, skip_NxHxWxC, method="project")
  np.testing.assert_allclose(layer.apply(params, y_NxHxWxC, term), expected,
                             rtol=1e-5, atol=1e-5)


def test_stride_1_conv_transpose_is_conv_with_the_same_kernel():
  """tconv6: nn.ConvTranspose(3x3, padding 1) == nn.Conv(padding 1) on the same parameters."""
  rng = np.random.default_rng(1)
  x_NxHxWxC = jnp.asarray(rng.normal(size=(2, 8, 8, 5)), jnp.float32)
  layer = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)),
                  conv_general_dilated=convolution.conv_general_dilated)  # as cpu_layers'
  _same_as_flax(layer, nn.ConvTranspose(4, (3, 3), padding=((1, 1), (1, 1))), x_NxHxWxC, rng)


@pytest.mark.parametrize("size, out_pad", [(4, 0), (7, 0), (13, 0), (4, 1)])
def test_up_conv_is_the_flax_stride_2_conv_transpose(size, out_pad):
  """UpConv3x3 == nn.ConvTranspose(3x3, stride 2, padding (1, 1 + out_pad)): n -> 2n-1+out_pad."""
  rng = np.random.default_rng(2)
  x_NxHxWxC = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
  reference = nn.ConvTranspose(4, (3, 3), strides=(2, 2), padding=((1, 1 + out_pad),) * 2)
  _same_as_flax(cpu_layers.UpConv3x3(4, out_pad), reference, x_NxHxWxC, rng)


def test_one_channel_conv_transpose_is_the_flax_layer():
  """tconv7: OneChannelConvTranspose(2, (1, 1)) == nn.ConvTranspose(1, (2, 2), padding 1)."""
  rng = np.random.default_rng(3)
  x_NxHxWxC = jnp.asarray(rng.normal(size=(2, 25, 25, 6)), jnp.float32)
  _same_as_flax(cpu_layers.OneChannelConvTranspose(2, (1, 1)),
                nn.ConvTranspose(1, (2, 2), padding=((1, 1), (1, 1))), x_NxHxWxC, rng)


def _episode(batch=2, memory_size=3, num_importance=4, seed=0):
  key_x, key_m, key_k = jax.random.split(jax.random.key(seed), 3)
  x_BxHxW = jax.random.bernoulli(key_x, 0.3, (batch, 26, 26)).astype(jnp.float32)
  memory_BxTxHxW = jax.random.bernoulli(key_m, 0.3, (batch, memory_size, 26, 26)).astype(
      jnp.float32)
  keys_BxK = vma_model.sample_keys(jax.random.split(key_k, batch), 0, num_importance)
  return x_BxHxW, memory_BxTxHxW, keys_BxK


@pytest.mark.slow
@pytest.mark.parametrize("param_init", ["torch", "flax"])
def test_both_paths_have_the_same_initial_parameters(param_init):
  """cpu_kernels "on" and "off" draw identical initial parameters from one key."""
  episode = _episode()
  # Jitted whole (op by op, each of the model's operations would compile alone).
  init = lambda cpu_kernels: jax.jit(vma_model.VMA(param_init=param_init,
                                                   cpu_kernels=cpu_kernels).init)
  same = jax.tree.map(np.array_equal, init("off")(jax.random.key(3), *episode),
                      init("on")(jax.random.key(3), *episode))
  assert all(jax.tree.leaves(same))


@pytest.mark.slow
def test_both_paths_compute_the_same_function():
  """cpu_kernels "on" and "off": in float64 the same log-weights and VIMCO gradients to 1e-9
  of each array's scale (in float32 the two orders of summation differ by rounding,
  amplified through the layers: benchmarks/check_equal.py). On parameters perturbed off their
  initial values (param_init only sets those), so that every path carries signal."""
  episode = _episode()
  params = jax.jit(vma_model.VMA(cpu_kernels="off").init)(jax.random.key(3), *episode)
  # Non-zero dummies and biases.
  params = jax.tree.map(lambda p: np.asarray(p, np.float64) + 0.05 * np.random.default_rng(
      p.size).normal(size=p.shape), params)

  def loss_and_log_w(dtype, cpu_kernels, params):
    model = vma_model.VMA(cpu_kernels=cpu_kernels, dtype=dtype)
    x_BxHxW, memory_BxTxHxW, keys_BxK = episode
    weights = model.apply(params, x_BxHxW.astype(dtype), memory_BxTxHxW.astype(dtype), keys_BxK)
    loss = -jnp.mean(objective.vimco_surrogate(weights.log_w_BxK, weights.log_q_a_BxK))
    return loss, weights.log_w_BxK

  with jax.enable_x64(True):
    (_, log_w_s), grads_s = jax.jit(jax.value_and_grad(
        functools.partial(loss_and_log_w, "float64", "off"), has_aux=True))(params)
    (_, log_w_f), grads_f = jax.jit(jax.value_and_grad(
        functools.partial(loss_and_log_w, "float64", "on"), has_aux=True))(params)
  np.testing.assert_allclose(log_w_f, log_w_s, rtol=1e-9)
  for path, g_s in jax.tree_util.tree_flatten_with_path(grads_s)[0]:
    g_f = functools.reduce(lambda tree, k: tree[k.key], path, grads_f)
    scale = float(np.max(np.abs(g_s))) + 1e-12
    np.testing.assert_allclose(g_f, g_s, rtol=0, atol=1e-9 * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_forward_mode_differentiation_works_on_the_stock_path():
  """jax.jvp through VMA.apply (and a Hessian-vector product) on stock layers; the CPU layers'
  custom gradients do not support forward mode, which is why they are opt-in."""
  episode = _episode(num_importance=2)
  stock = vma_model.VMA(cpu_kernels="off")
  params = jax.jit(stock.init)(jax.random.key(0), *episode)  # jitted: one compile, not one per op
  tangent = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), params)
  log_w = lambda model: lambda p: model.apply(p, *episode).log_w_BxK
  value_BxK, tangent_BxK = jax.jit(lambda p, t: jax.jvp(log_w(stock), (p,), (t,)))(params,
                                                                                  tangent)
  assert tangent_BxK.shape == value_BxK.shape and bool(jnp.all(jnp.isfinite(tangent_BxK)))
  # Forward mode agrees with reverse mode: d/dt f(p + t v) = <grad f(p), v>.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(log_w(stock)(p))))(params)
  dot = sum(jnp.vdot(g, t) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(tangent)))
  np.testing.assert_allclose(jnp.sum(tangent_BxK), dot, rtol=1e-4)
  scalar = lambda p: jnp.sum(log_w(stock)(p))
  hvp = jax.jit(lambda p, t: jax.jvp(jax.grad(scalar), (p,), (t,))[1])(params, tangent)
  assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(hvp))
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(log_w(vma_model.VMA(cpu_kernels="on")), (params,), (tangent,))


def test_auto_takes_the_cpu_layers_only_on_the_cpu_backend():
  assert vma_model.use_cpu_kernels("auto", "cpu")
  for backend in ("gpu", "cuda", "rocm", "tpu"):
    assert not vma_model.use_cpu_kernels("auto", backend)
  assert vma_model.use_cpu_kernels("on", "tpu") and not vma_model.use_cpu_kernels("off", "cpu")
  with pytest.raises(ValueError, match="config.model.cpu_kernels must be one of auto, on, off"):
    vma_model.use_cpu_kernels("yes")
