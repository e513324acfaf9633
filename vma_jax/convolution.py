"""A 2-D convolution whose kernel gradient runs as matrix products on CPU.

`conv2d(x, kernel, strides, padding)` is `jax.lax.conv_general_dilated` in NHWC/HWIO layout:
the same function, the same input gradient (XLA's own). Its kernel gradient is

    dkernel[i, j] = sum_{n, u, v} xpad[n, s*u + i, s*v + j, :]^T dy[n, u, v, :],

a contraction over the M = N*Ho*Wo output pixels that XLA:CPU runs as a convolution at a
fraction of the speed of a matrix product. On CPU, where M is large, it is computed here as a
product of the im2col patches (M x kh*kw*C) with dy (M x O) instead, accumulated over chunks of
about a thousand pixels whose patches stay in cache: a loop whose every step is one small, fast
product, rather than a large product over copies of x shifted once per tap. Elsewhere (GPU, TPU,
or small M) it is XLA's. Both give the same gradient up to float rounding; docs/performance.md
has the measurements behind the constants below.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Fewer output pixels (N*Ho*Wo, over the whole batch) than this: XLA's kernel gradient (on
# such small layers the products gained nothing in whole training steps).
_MIN_ROWS = 1 << 14
# Output pixels per chunk and group: the patches of one chunk (~2 MB) stay in cache.
_CHUNK_ROWS = 1024
# Fewer input channels than this: one product over all M rows (a 1-channel input's patches are
# 9 columns wide, too thin for the chunks to pay).
_MIN_CHANNELS_PER_CHUNK = 16

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


def _largest_divisor_at_most(n: int, bound: int) -> int:
  return max(d for d in range(1, max(min(n, bound), 1) + 1) if n % d == 0)


def kernel_grad(x_NxHxWxC, dy_NxHoxWoxO, kernel_shape, strides, padding, *,
                groups: int | None = None, chunk_rows: int = _CHUNK_ROWS):
  """The kernel gradient of `conv2d` as matrix products: dkernel_KhxKwxCxO in float32.

  The N images are split into G contiguous groups (default: one per device, when that divides
  N; else G = 1), each group into chunks of I images with I * Ho * Wo <= `chunk_rows`; step t
  of a loop adds patches_t^T dy_t of chunk t of every group to that group's sum. With the batch
  sharded over the devices, each device sums its own group, and no device waits for another
  inside the loop (with G = 1, XLA would reduce the partial sums across devices at every step).
  """
  kh, kw, c, o = kernel_shape
  n = x_NxHxWxC.shape[0]
  (sh, sw), (ho, wo) = strides, dy_NxHoxWoxO.shape[1:3]
  width = kh * kw * c

  def patches(images_NxHxWxC):
    """Row (n, u, v) holds the kh * kw * C inputs that output pixel (u, v) of image n sees."""
    xpad_NxHpxWpxC = jnp.pad(images_NxHxWxC, ((0, 0), *padding, (0, 0)))
    taps = [xpad_NxHpxWpxC[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1)  # N x Ho x Wo x kh*kw*C

  if c < _MIN_CHANNELS_PER_CHUNK:
    patches_MxP = patches(x_NxHxWxC).reshape(-1, width)
    return jnp.matmul(patches_MxP.T, dy_NxHoxWoxO.reshape(-1, o),
                      preferred_element_type=jnp.float32).reshape(kh, kw, c, o)

  groups = jax.device_count() if groups is None else groups
  groups = groups if n % groups == 0 else 1
  images = _largest_divisor_at_most(n // groups, chunk_rows // (ho * wo))
  steps = n // (groups * images)
  # Image (g * I + i) * steps + t is image i of chunk t in group g: a contiguous block of
  # images per group, as a batch sharded over the devices is laid out.
  x_GxIxSxHxWxC = x_NxHxWxC.reshape(groups, images, steps, *x_NxHxWxC.shape[1:])
  dy_GxIxSxHoxWoxO = dy_NxHoxWoxO.reshape(groups, images, steps, ho, wo, o)

  def add_chunk(dkernel_GxPxO, t):
    x_GIxHxWxC = jax.lax.dynamic_index_in_dim(x_GxIxSxHxWxC, t, 2, keepdims=False).reshape(
        groups * images, *x_NxHxWxC.shape[1:])
    patches_GxMxP = patches(x_GIxHxWxC).reshape(groups, -1, width)
    dy_GxMxO = jax.lax.dynamic_index_in_dim(dy_GxIxSxHoxWoxO, t, 2, keepdims=False).reshape(
        groups, -1, o)
    return dkernel_GxPxO + jnp.einsum("gmp,gmo->gpo", patches_GxMxP, dy_GxMxO,
                                      preferred_element_type=jnp.float32), None

  dkernel_GxPxO, _ = jax.lax.scan(add_chunk, jnp.zeros((groups, width, o), jnp.float32),
                                  jnp.arange(steps))
  return dkernel_GxPxO.sum(0).reshape(kh, kw, c, o)


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
