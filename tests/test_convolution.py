"""`convolution.conv2d`: XLA's convolution, with the kernel gradient as matrix products on CPU.

Reference: `jax.lax.conv_general_dilated` and its own gradients, on random inputs, for the
layer shapes of the model (3x3 stride 1 and 2, the 2x2 kernel of the up-sampling layers, one
and many input channels) and a few odd ones (asymmetric padding, unequal strides).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vma_jax.cpu import convolution

DN = ("NHWC", "HWIO", "NHWC")

# (input N x H x W x C, kernel kh x kw, output channels, strides, padding)
CASES = [
    ((3, 9, 9, 1), (3, 3), 5, (1, 1), ((1, 1), (1, 1))),  # few channels: im2col
    ((3, 9, 9, 20), (3, 3), 6, (1, 1), ((1, 1), (1, 1))),  # many channels: chunks
    ((2, 10, 10, 20), (3, 3), 4, (2, 2), ((1, 1), (1, 1))),  # stride 2, even input
    ((2, 9, 9, 16), (3, 3), 4, (2, 2), ((1, 1), (1, 1))),  # stride 2, odd input
    ((2, 7, 7, 24), (2, 2), 8, (1, 1), ((0, 1), (0, 1))),  # the up-sampling layers' 2x2
    ((2, 8, 11, 3), (3, 2), 5, (2, 1), ((0, 2), (1, 0))),  # unequal everything
]


def _reference(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DN)


def _inputs(x_shape, kernel_hw, features, strides, padding, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(*kernel_hw, x_shape[-1], features)), jnp.float32)
  dy = jnp.asarray(rng.normal(size=_reference(x, kernel, strides, padding).shape), jnp.float32)
  return x, kernel, dy


@pytest.mark.parametrize("x_shape, kernel_hw, features, strides, padding", CASES)
def test_kernel_grad_is_the_convolution_kernel_gradient(x_shape, kernel_hw, features, strides,
                                                        padding):
  x, kernel, dy = _inputs(x_shape, kernel_hw, features, strides, padding)
  _, vjp = jax.vjp(lambda k: _reference(x, k, strides, padding), kernel)
  expected = vjp(dy)[0]
  got = jax.jit(convolution.kernel_grad, static_argnums=(2, 3, 4))(
      x, dy, kernel.shape, strides, padding)
  assert got.shape == kernel.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("groups, chunk_rows", [
    (1, 1), (2, 1), (3, 50), (4, 100), (5, 1 << 20), (12, 1)],
                         ids=["1x12", "2x6", "3x2", "4x1", "5_does_not_divide", "12x1"])
def test_kernel_grad_in_groups_and_chunks(groups, chunk_rows):
  """12 images, 5x5 outputs: G groups of 12 / G images, in chunks of <= chunk_rows pixels."""
  x, kernel, dy = _inputs((12, 9, 9, 16), (3, 3), 4, (2, 2), ((1, 1), (1, 1)), seed=1)
  _, vjp = jax.vjp(lambda k: _reference(x, k, (2, 2), ((1, 1), (1, 1))), kernel)
  got = jax.jit(convolution.kernel_grad, static_argnums=(2, 3, 4),
                static_argnames=("groups", "chunk_rows"))(
                    x, dy, kernel.shape, (2, 2), ((1, 1), (1, 1)), groups=groups,
                    chunk_rows=chunk_rows)
  np.testing.assert_allclose(got, vjp(dy)[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("min_rows", [0, 1 << 30], ids=["matmul", "xla"])
@pytest.mark.parametrize("x_shape, kernel_hw, features, strides, padding", CASES)
def test_conv2d_function_and_gradients_are_xlas(x_shape, kernel_hw, features, strides, padding,
                                                min_rows, monkeypatch):
  monkeypatch.setattr(convolution, "_MIN_ROWS", min_rows)
  x, kernel, dy = _inputs(x_shape, kernel_hw, features, strides, padding)
  y, vjp = jax.vjp(lambda x, k: convolution.conv2d(x, k, strides, padding), x, kernel)
  y_ref, vjp_ref = jax.vjp(lambda x, k: _reference(x, k, strides, padding), x, kernel)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-5)
  for got, expected in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def _lowered_kernel_grad(x_shape, platform):
  """The StableHLO of conv2d's kernel gradient (no other dots or convolutions) for `platform`."""
  x, kernel, dy = _inputs(x_shape, (3, 3), 8, (1, 1), ((1, 1), (1, 1)))
  grad_fn = jax.jit(jax.grad(
      lambda k: jnp.sum(dy * convolution.conv2d(x, k, (1, 1), ((1, 1), (1, 1))))))
  return grad_fn.trace(kernel).lower(lowering_platforms=(platform,)).as_text()


def test_kernel_gradient_is_a_matrix_product_on_cpu_above_the_threshold(monkeypatch):
  """CPU, >= `_MIN_ROWS` output pixels: dots; fewer, or on GPU and TPU: XLA's convolution."""
  monkeypatch.setattr(convolution, "_MIN_ROWS", 2 * 10 * 10)
  cpu_above = _lowered_kernel_grad((2, 10, 10, 16), "cpu")
  assert "dot_general" in cpu_above and "convolution" not in cpu_above
  for platform, x_shape in [("cpu", (1, 10, 10, 16)), ("cuda", (2, 10, 10, 16)),
                            ("tpu", (2, 10, 10, 16))]:
    lowered = _lowered_kernel_grad(x_shape, platform)
    assert "dot_general" not in lowered and "convolution" in lowered, platform


def test_default_threshold_sends_the_training_encoders_layers_to_matmuls():
  """At the default threshold, a 13x13 layer of train_small's encoder (B(1+T) = 288 images)
  takes the matrix products; the same layer on the 2 dummy slots keeps XLA's convolution."""
  encoder_layer = _lowered_kernel_grad((32 * (1 + 8), 13, 13, 16), "cpu")
  assert "dot_general" in encoder_layer and "convolution" not in encoder_layer
  dummies_layer = _lowered_kernel_grad((2, 13, 13, 16), "cpu")
  assert "dot_general" not in dummies_layer and "convolution" in dummies_layer


def test_bfloat16_kernel_gradient_keeps_the_kernel_dtype(monkeypatch):
  monkeypatch.setattr(convolution, "_MIN_ROWS", 0)
  x, kernel, dy = _inputs((2, 9, 9, 20), (3, 3), 6, (1, 1), ((1, 1), (1, 1)))
  x, kernel, dy = (a.astype(jnp.bfloat16) for a in (x, kernel, dy))
  _, vjp = jax.vjp(lambda x, k: convolution.conv2d(x, k, (1, 1), ((1, 1), (1, 1))), x, kernel)
  dx, dkernel = vjp(dy)
  assert dx.dtype == dkernel.dtype == jnp.bfloat16
  _, vjp_ref = jax.vjp(lambda k: _reference(x.astype(jnp.float32), k, (1, 1), ((1, 1), (1, 1))),
                       kernel.astype(jnp.float32))
  expected = vjp_ref(dy.astype(jnp.float32))[0]
  np.testing.assert_allclose(dkernel.astype(jnp.float32), expected,
                             rtol=2e-2, atol=2e-2 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize("strides, padding", [
    ((0, 1), ((1, 1), (1, 1))), ((1, 1), ((-1, 1), (1, 1))), ((1,), ((1, 1), (1, 1))),
    ((1, 1), ((1, 1),))])
def test_bad_strides_or_padding_are_rejected(strides, padding):
  x, kernel, _ = _inputs((1, 5, 5, 2), (3, 3), 2, (1, 1), ((1, 1), (1, 1)))
  with pytest.raises(ValueError, match="positive strides"):
    convolution.conv2d(x, kernel, strides, padding)


# (input N x H x W x C, kernel kh x kw, output channels, strides, padding): every phase of
# the input, including phases no tap reaches (kernel smaller than the stride), rows no output
# reads (the encoder's 26 -> 13), inputs smaller than the stride, and negative shifts of dy.
INPUT_GRAD_CASES = CASES + [
    ((2, 26, 26, 3), (3, 3), 4, (2, 2), ((1, 1), (1, 1))),  # the encoder's conv2, 26 -> 13
    ((2, 7, 7, 3), (3, 3), 4, (2, 2), ((1, 1), (1, 1))),  # its conv6, 7 -> 4
    ((2, 9, 8, 2), (1, 1), 3, (2, 2), ((0, 0), (0, 0))),  # 1x1: odd phases get nothing
    ((2, 10, 11, 2), (4, 4), 3, (3, 2), ((2, 1), (0, 3))),  # kernel > stride, pads on both
    ((1, 2, 2, 2), (3, 3), 2, (3, 3), ((1, 1), (1, 1))),  # input smaller than the stride
    ((2, 12, 9, 2), (5, 3), 2, (3, 3), ((0, 2), (2, 0))),
]


@pytest.mark.parametrize("x_shape, kernel_hw, features, strides, padding", INPUT_GRAD_CASES)
def test_input_grad_is_the_convolution_input_gradient(x_shape, kernel_hw, features, strides,
                                                      padding):
  x, kernel, dy = _inputs(x_shape, kernel_hw, features, strides, padding)
  _, vjp = jax.vjp(lambda x: _reference(x, kernel, strides, padding), x)
  expected = vjp(dy)[0]
  got = jax.jit(convolution.input_grad, static_argnums=(2, 3, 4))(
      dy, kernel, x_shape[1:3], strides, padding)
  assert got.shape == x.shape and got.dtype == dy.dtype
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def _lowered_input_grad(x_shape, strides, platform):
  """The StableHLO of conv2d's input gradient for `platform`."""
  x, kernel, dy = _inputs(x_shape, (3, 3), 8, strides, ((1, 1), (1, 1)))
  grad_fn = jax.jit(jax.grad(
      lambda x: jnp.sum(dy * convolution.conv2d(x, kernel, strides, ((1, 1), (1, 1))))))
  return grad_fn.trace(x).lower(lowering_platforms=(platform,)).as_text()


def test_strided_input_gradient_is_stride1_convs_on_cpu_above_the_threshold(monkeypatch):
  """CPU, >= `_MIN_ROWS` output pixels, stride 2: four stride-1 convs of dy, none over a dilated
  dy; fewer pixels, stride 1, or GPU and TPU: XLA's conv over dy dilated with zeros."""
  monkeypatch.setattr(convolution, "_MIN_ROWS", 2 * 5 * 5)
  dilated = "lhs_dilate = [2, 2]"
  cpu_above = _lowered_input_grad((2, 10, 10, 16), (2, 2), "cpu")
  assert cpu_above.count("stablehlo.convolution") == 4 and dilated not in cpu_above
  for platform, x_shape in [("cpu", (1, 10, 10, 16)), ("cuda", (2, 10, 10, 16)),
                            ("tpu", (2, 10, 10, 16))]:
    lowered = _lowered_input_grad(x_shape, (2, 2), platform)
    assert lowered.count("stablehlo.convolution") == 1 and dilated in lowered, platform
  stride1 = _lowered_input_grad((2, 10, 10, 16), (1, 1), "cpu")
  assert stride1.count("stablehlo.convolution") == 1
