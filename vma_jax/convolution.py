"""A 2-D convolution whose kernel gradient runs as matrix products on CPU.

`conv2d(x, kernel, strides, padding)` is `jax.lax.conv_general_dilated` in NHWC/HWIO layout:
the same function, the same input gradient (XLA's own). Its kernel gradient is

    dkernel[i, j] = sum_{n, u, v} xpad[n, s*u + i, s*v + j, :]^T dy[n, u, v, :],

a contraction over the M = N*Ho*Wo output pixels that XLA:CPU runs as a convolution at about a
quarter of the speed of a matrix product. On CPU, where M is large, it is computed here as
matrix products instead: one per tap (C x M by M x O) when the input has many channels, or one
product of the im2col patches (M x kh*kw*C) when it has few, where a product per tap would be
too thin. Elsewhere (GPU, TPU, or small M) it is XLA's. Both give the same gradient up to float
rounding; docs/performance.md has the measurements behind the two thresholds below.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Fewer output pixels (N*Ho*Wo, over the whole batch) than this: XLA's kernel gradient. In
# whole training steps on 2 cores the products cost more than they saved below ~50k pixels.
_MIN_ROWS = 1 << 16
# Fewer input channels than this: one im2col product rather than one product per tap (a
# 1-channel input ran 5.7x faster as im2col; 48 or 64 channels 0.85-1.7x as fast per tap).
_MIN_CHANNELS_PER_TAP = 16

Padding = Sequence[tuple[int, int]]


def _conv(x_NxHxWxC, kernel_KhxKwxCxO, strides, padding):
  return jax.lax.conv_general_dilated(
      x_NxHxWxC, kernel_KhxKwxCxO, strides, padding, dimension_numbers=_DIMENSION_NUMBERS)


def conv2d(x_NxHxWxC: jax.Array, kernel_KhxKwxCxO: jax.Array, strides: Sequence[int],
           padding: Padding) -> jax.Array:
  """y[n, u, v, o] = sum_{i, j, c} xpad[n, s*u + i, s*v + j, c] kernel[i, j, c, o].

  `padding` is ((top, bottom), (left, right)) of non-negative zeros; `strides` is (sh, sw).
  Gradients: as `jax.lax.conv_general_dilated`'s, the kernel's computed as matrix products on
  CPU (see the module docstring).
  """
  strides = tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if (len(strides) != 2 or len(padding) != 2 or min(strides) < 1
      or min(sum(padding, ())) < 0):
    raise ValueError(f"conv2d takes 2 positive strides and 2 non-negative (lo, hi) pads, got "
                     f"strides={strides}, padding={padding}")
  return _conv2d(x_NxHxWxC, kernel_KhxKwxCxO, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv2d(x_NxHxWxC, kernel_KhxKwxCxO, strides, padding):
  return _conv(x_NxHxWxC, kernel_KhxKwxCxO, strides, padding)


def _conv2d_fwd(x_NxHxWxC, kernel_KhxKwxCxO, strides, padding):
  y = _conv(x_NxHxWxC, kernel_KhxKwxCxO, strides, padding)
  return y, (x_NxHxWxC, kernel_KhxKwxCxO)


def kernel_grad(x_NxHxWxC, dy_NxHoxWoxO, kernel_shape, strides, padding):
  """The kernel gradient of `conv2d` as matrix products: dkernel_KhxKwxCxO in float32."""
  kh, kw, c, o = kernel_shape
  (sh, sw), (ho, wo) = strides, dy_NxHoxWoxO.shape[1:3]
  xpad_NxHpxWpxC = jnp.pad(x_NxHxWxC, ((0, 0), *padding, (0, 0)))
  window = (xpad_NxHpxWpxC.shape[0], sh * (ho - 1) + 1, sw * (wo - 1) + 1, c)
  dy_MxO = dy_NxHoxWoxO.reshape(-1, o)
  matmul = lambda a_MxP, b_MxO: jnp.matmul(a_MxP.T, b_MxO, preferred_element_type=jnp.float32)

  def tap(i, j):
    """The input pixels that tap (i, j) multiplies: M x C."""
    window_NxHwxWwxC = jax.lax.dynamic_slice(xpad_NxHpxWpxC, (0, i, j, 0), window)
    return window_NxHwxWwxC[:, ::sh, ::sw].reshape(-1, c)

  if c < _MIN_CHANNELS_PER_TAP:
    patches_MxP = jnp.concatenate([tap(i, j) for i in range(kh) for j in range(kw)], axis=-1)
    return matmul(patches_MxP, dy_MxO).reshape(kh, kw, c, o)
  # A loop over the taps makes one shifted copy of x at a time, once dy exists; unrolled, XLA
  # makes all kh * kw copies early (in the forward pass) and keeps them to the backward.
  dkernel_TxCxO = jax.lax.map(lambda t: matmul(tap(t // kw, t % kw), dy_MxO),
                              jnp.arange(kh * kw))
  return dkernel_TxCxO.reshape(kh, kw, c, o)


def _conv2d_bwd(strides, padding, residuals, dy_NxHoxWoxO):
  x_NxHxWxC, kernel_KhxKwxCxO = residuals
  of_x = lambda x: _conv(x, kernel_KhxKwxCxO, strides, padding)
  (dx_NxHxWxC,) = jax.linear_transpose(of_x, x_NxHxWxC)(dy_NxHoxWoxO)

  def xla_kernel_grad(x, dy):
    of_kernel = lambda kernel: _conv(x, kernel, strides, padding)
    return jax.linear_transpose(of_kernel, kernel_KhxKwxCxO)(dy)[0]

  def matmul_kernel_grad(x, dy):
    dkernel_f32 = kernel_grad(x, dy, kernel_KhxKwxCxO.shape, strides, padding)
    return dkernel_f32.astype(kernel_KhxKwxCxO.dtype)

  rows = dy_NxHoxWoxO.shape[0] * dy_NxHoxWoxO.shape[1] * dy_NxHoxWoxO.shape[2]
  if rows < _MIN_ROWS:
    dkernel_KhxKwxCxO = xla_kernel_grad(x_NxHxWxC, dy_NxHoxWoxO)
  else:
    dkernel_KhxKwxCxO = jax.lax.platform_dependent(
        x_NxHxWxC, dy_NxHoxWoxO, cpu=matmul_kernel_grad, default=xla_kernel_grad)
  return dx_NxHxWxC, dkernel_KhxKwxCxO


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
