"""A 2-D convolution whose gradients run as matrix products and stride-1 convs on CPU.

`conv2d(x, kernel, strides, padding)` is `jax.lax.conv_general_dilated` in NHWC/HWIO layout:
the same function and the same gradients up to float rounding. On CPU, for layers of at least
`_MIN_ROWS` output pixels, two of its gradients are computed differently from XLA's:

- the kernel gradient,

      dkernel[i, j] = sum_{n, u, v} xpad[n, s*u + i, s*v + j, :]^T dy[n, u, v, :],

  a contraction over the M = N*Ho*Wo output pixels that XLA:CPU runs as a convolution at a
  fraction of the speed of a matrix product. Here it is a product of the im2col patches, laid
  out (kh*kw*C) x M, with dy (M x O), accumulated over chunks of about a thousand pixels whose
  patches stay in cache: a loop whose every step is one small product in the layout that
  XLA:CPU hands to its fast matrix-product library (YNNPACK), rather than a large product
  over copies of x shifted once per tap (`kernel_grad`);
- the input gradient of a strided conv, which XLA computes as a conv over dy dilated with
  zeros, outside the fast convolution library. Here each phase of the input (the rows s*m + p
  and columns s*m' + q) is a stride-1 conv of dy with the taps that reach it (`input_grad`).

Elsewhere (GPU, TPU, or small layers) both are XLA's. docs/performance.md has the
measurements behind the constants below.

Shape letters in this module are a convolution's, not the model's (docs/model.md): N images,
H x W their size (Ho x Wo the output's, Hp x Wp padded), C input and O output channels,
Kh x Kw the kernel, T = Kh * Kw taps, M = N * Ho * Wo output pixels; in the chunked kernel
gradient, G device groups of I images for each of S chunks.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# Fewer output pixels (N*Ho*Wo, over the whole batch) than this: XLA's gradients (on such
# small layers the products gained nothing in whole training steps).
_MIN_ROWS = 1 << 14
# Output pixels per chunk and group: the patches of one chunk (~2 MB) stay in cache.
_CHUNK_ROWS = 1024
# Fewer input channels than this: one product over all M rows (a 1-channel input's patches are
# 9 rows high, too thin for the chunks to pay).
_MIN_CHANNELS_PER_CHUNK = 16

Padding = Sequence[tuple[int, int]]


def _conv(x_NxHxWxC, kernel_KhxKwxCxO, strides, padding):
  return jax.lax.conv_general_dilated(
      x_NxHxWxC, kernel_KhxKwxCxO, strides, padding, dimension_numbers=_DIMENSION_NUMBERS)


def conv2d(x_NxHxWxC: jax.Array, kernel_KhxKwxCxO: jax.Array, strides: Sequence[int],
           padding: Padding) -> jax.Array:
  """y[n, u, v, o] = sum_{i, j, c} xpad[n, s*u + i, s*v + j, c] kernel[i, j, c, o].

  `padding` is ((top, bottom), (left, right)) of non-negative zeros; `strides` is (sh, sw).
  Gradients: as `jax.lax.conv_general_dilated`'s; on CPU the kernel's computed as matrix
  products and a strided conv's input gradient as stride-1 convs (see the module docstring).
  """
  strides = tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if (len(strides) != 2 or len(padding) != 2 or min(strides) < 1
      or min(sum(padding, ())) < 0):
    raise ValueError(f"conv2d takes 2 positive strides and 2 non-negative (lo, hi) pads, got "
                     f"strides={strides}, padding={padding}")
  return _conv2d(x_NxHxWxC, kernel_KhxKwxCxO, strides, padding)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs):
  """`jax.lax.conv_general_dilated` for nn.Conv(conv_general_dilated=...): `conv2d` where it
  applies (NHWC/HWIO, explicit padding, no dilation or groups), else lax's own."""
  if (lhs.ndim == 4 and not isinstance(padding, str) and feature_group_count == 1
      and precision is None and not kwargs
      and all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
      and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSION_NUMBERS)):
    return conv2d(lhs, rhs, window_strides, padding)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
      feature_group_count, precision=precision, **kwargs)


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
  of a loop adds patches_t dy_t of chunk t of every group to that group's sum, where the
  (kh*kw*C) x M patches_t hold, row (i, j, c), the channel-c inputs that tap (i, j) multiplies
  at the M = I * Ho * Wo output pixels. With the batch sharded over the devices, each device
  sums its own group, and no device waits for another inside the loop (with G = 1, XLA would
  reduce the partial sums across devices at every step). In this layout (the contraction over
  the left operand's last axis) XLA:CPU runs the product in YNNPACK, about 1.8 times as fast
  as the transposed product of pixels x (kh*kw*C) patches (docs/performance.md).
  """
  kh, kw, c, o = kernel_shape
  n = x_NxHxWxC.shape[0]
  (sh, sw), (ho, wo) = strides, dy_NxHoxWoxO.shape[1:3]

  def taps(images_NxHxWxC):
    """T x C x N x Ho x Wo, T = kh * kw: [kw*i + j, c, n, u, v] = xpad[n, s*u + i, s*v + j, c].

    Channels before pixels: reshaped, the product's left operand, with no transpose to copy.
    """
    xpad_CxNxHpxWp = jnp.pad(images_NxHxWxC, ((0, 0), *padding, (0, 0))).transpose(3, 0, 1, 2)
    return jnp.stack([xpad_CxNxHpxWp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                      for i in range(kh) for j in range(kw)])

  if c < _MIN_CHANNELS_PER_CHUNK:
    taps_TCxM = taps(x_NxHxWxC).reshape(kh * kw * c, -1)
    return jnp.matmul(taps_TCxM, dy_NxHoxWoxO.reshape(-1, o),
                      preferred_element_type=jnp.float32).reshape(kh, kw, c, o)

  groups = jax.device_count() if groups is None else groups
  groups = groups if n % groups == 0 else 1
  images = _largest_divisor_at_most(n // groups, chunk_rows // (ho * wo))
  steps = n // (groups * images)
  # Image (g * I + i) * steps + t is image i of chunk t in group g: a contiguous block of
  # images per group, as a batch sharded over the devices is laid out.
  x_GxIxSxHxWxC = x_NxHxWxC.reshape(groups, images, steps, *x_NxHxWxC.shape[1:])
  dy_GxIxSxHoxWoxO = dy_NxHoxWoxO.reshape(groups, images, steps, ho, wo, o)

  def add_chunk(dkernel_GxTCxO, t):
    x_GIxHxWxC = jax.lax.dynamic_index_in_dim(x_GxIxSxHxWxC, t, 2, keepdims=False).reshape(
        groups * images, *x_NxHxWxC.shape[1:])
    taps_GxTCxM = taps(x_GIxHxWxC).reshape(kh * kw * c, groups, -1).transpose(1, 0, 2)
    dy_GxMxO = jax.lax.dynamic_index_in_dim(dy_GxIxSxHoxWoxO, t, 2, keepdims=False).reshape(
        groups, -1, o)
    return dkernel_GxTCxO + jnp.einsum("gpm,gmo->gpo", taps_GxTCxM, dy_GxMxO,
                                       preferred_element_type=jnp.float32), None

  dkernel_GxTCxO, _ = jax.lax.scan(
      add_chunk, jnp.zeros((groups, kh * kw * c, o), jnp.float32), jnp.arange(steps))
  return dkernel_GxTCxO.sum(0).reshape(kh, kw, c, o)


def _phase_taps(phase: int, pad_lo: int, stride: int, size: int) -> list[tuple[int, int]]:
  """Along one axis, the taps i through which dy[m + d] reaches x[stride*m + phase], as (i, d).

  Output u reads xpad[stride*u + i] = x[stride*u + i - pad_lo], so x[stride*m + phase] is read
  by u = m + d with d = (phase + pad_lo - i) / stride, for the taps i where that is an integer:
  every stride-th tap, whose offsets d are consecutive.
  """
  return [(i, (phase + pad_lo - i) // stride) for i in range(size)
          if (phase + pad_lo - i) % stride == 0]


def input_grad(dy_NxHoxWoxO, kernel_KhxKwxCxO, input_hw, strides, padding):
  """The input gradient of `conv2d`, as one stride-1 conv of dy per phase of the input.

  With strides (s, t), phase (p, q) of dx, dx[n, s*m + p, t*m' + q], is

      sum over the taps (i, d) of p and (j, d') of q of  dy[n, m + d, m' + d'] kernel[i, j]^T,

  a VALID stride-1 conv of dy (shifted by the smallest offsets, padded with zeros past its
  edges) with those taps, in the order of their offsets. The s*t phases are interleaved.
  Returns dx_NxHxWxC, H x W = `input_hw`, in dy's dtype.
  """
  n, ho, wo, _ = dy_NxHoxWoxO.shape
  h, w = input_hw
  kh, kw, c, _ = kernel_KhxKwxCxO.shape
  (sh, sw), ((lo_h, _), (lo_w, _)) = strides, padding
  hs, ws = -(-h // sh), -(-w // sw)  # rows and columns per phase, the last ones padded

  def phase(p, q):
    """dx_NxHsxWsxC[:, m, m'] = dx[:, sh*m + p, sw*m' + q] (zeros past the input's edge)."""
    taps_h, taps_w = _phase_taps(p, lo_h, sh, kh), _phase_taps(q, lo_w, sw, kw)
    if not taps_h or not taps_w:
      return jnp.zeros((n, hs, ws, c), dy_NxHoxWoxO.dtype)  # the conv never reads this phase
    # Offsets ascending: taps descending. A x B taps reach the phase.
    i_h, d_h = zip(*sorted(taps_h, key=lambda tap: tap[1]))
    i_w, d_w = zip(*sorted(taps_w, key=lambda tap: tap[1]))
    kernel_AxBxOxC = kernel_KhxKwxCxO[np.array(i_h)][:, np.array(i_w)].transpose(0, 1, 3, 2)
    # Rows d_h[0] .. hs - 1 + d_h[-1] of dy (zeros past its edges; negative pads crop).
    dy_NxHs1xWs1xO = jax.lax.pad(dy_NxHoxWoxO, jnp.zeros((), dy_NxHoxWoxO.dtype), (
        (0, 0, 0), (-d_h[0], hs - 1 + d_h[-1] - (ho - 1), 0),
        (-d_w[0], ws - 1 + d_w[-1] - (wo - 1), 0), (0, 0, 0)))
    return _conv(dy_NxHs1xWs1xO, kernel_AxBxOxC, (1, 1), ((0, 0), (0, 0)))

  dx_NxHsxShxWsxSwxC = jnp.stack(
      [jnp.stack([phase(p, q) for q in range(sw)], axis=3) for p in range(sh)], axis=2)
  # Interleaved, then the padded phases' last rows and columns cropped.
  return dx_NxHsxShxWsxSwxC.reshape(n, hs * sh, ws * sw, c)[:, :h, :w]


def _conv2d_bwd(strides, padding, residuals, dy_NxHoxWoxO):
  x_NxHxWxC, kernel_KhxKwxCxO = residuals

  def xla_input_grad(dy, kernel):
    of_x = lambda x: _conv(x, kernel, strides, padding)
    return jax.linear_transpose(of_x, x_NxHxWxC)(dy)[0]

  def phase_input_grad(dy, kernel):
    return input_grad(dy, kernel, x_NxHxWxC.shape[1:3], strides, padding)

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
  if rows < _MIN_ROWS or strides == (1, 1):
    dx_NxHxWxC = xla_input_grad(dy_NxHoxWoxO, kernel_KhxKwxCxO)
  else:
    dx_NxHxWxC = jax.lax.platform_dependent(
        dy_NxHoxWoxO, kernel_KhxKwxCxO, cpu=phase_input_grad, default=xla_input_grad)
  return dx_NxHxWxC, dkernel_KhxKwxCxO


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
