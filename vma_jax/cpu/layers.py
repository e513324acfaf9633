"""The networks' Encoder and Decoder on layers that XLA:CPU runs faster: same parameters, same
function as `vma_jax.networks` (`benchmarks/check_equal.py`, tests/test_cpu_layers.py).

- Every conv, and the stride-1 transposed conv tconv6 (the conv with the same kernel and
  padding), goes through `convolution.conv2d`, whose kernel gradient runs as matrix products
  and whose strided input gradient runs as stride-1 convs on CPU.
- The decoder's stride-2 transposed convs are computed at stride 1 on the even/odd phases of
  their output (`UpConv3x3`): XLA lowers nn.ConvTranspose to a conv over an input dilated with
  zeros, whose gradients are slow on CPU.
- The one-channel output layer runs as one matmul and shifted sums (`OneChannelConvTranspose`).
- The two layers that merge a skip split into the skip's term, computed once per memory slot
  and shared by every sample that addresses it, and the sample's term
  (`ConcatConvTranspose3x3`).

docs/performance.md has what each gains on CPU. Feature maps are N x H x W x C, as in
`vma_jax.networks`.
"""

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vma_jax import initializers
from vma_jax import networks
from vma_jax.cpu import convolution


class SkipTerms(NamedTuple):
  """The skips' terms in the decoder's two merge layers (`ConcatConvTranspose3x3.project`).

  Linear in the skips of the retrieved slot m_a and independent of z: computed once per slot,
  they are shared by every sample that addresses it.
  """

  a_NxH1xW1xC: jax.Array  # skips.a through tconv4's skip channels: 48 x 13 x 13 for 26x26
  b_NxH2xW2xC: jax.Array  # skips.b through tconv2's skip channels: 64 x 7 x 7


def _conv_params(module: nn.Module, shape, *, transposed: bool):
  """The 'kernel' (KhxKwxCinxCout) and 'bias' of a layer, initialised as its stock Flax
  counterpart (nn.Conv, or nn.ConvTranspose when `transposed`) is."""
  kernel_init, bias_init = initializers.conv_init(module.param_init, shape,
                                                  transposed=transposed)
  kernel = module.param("kernel", kernel_init, shape, jnp.float32)
  bias = module.param("bias", bias_init, (shape[-1],), jnp.float32)
  return kernel, bias


# Which 3x3 tap feeds output phase p (0 = even, 1 = odd) from input offset d (0 or +1):
# y[2m] = x[m] w[1] and y[2m+1] = x[m] w[0] + x[m+1] w[2] (the adjoint of a pad-1 stride-2 conv).
_PHASE_TAP = {(0, 0): 1, (1, 0): 0, (1, 1): 2}


class UpConv3x3(nn.Module):
  """A 3x3 stride-2 transposed conv with padding 1: n -> 2n - 1 + out_pad, without the zeros.

  Same parameters ('kernel' 3x3xCinxCout, 'bias') and the same function as
  nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 1 + out_pad),) * 2). The
  output is split into its four phases (even/odd row x even/odd column); each phase is a
  stride-1 conv of the undilated input with a 1x1, 1x2, 2x1 or 2x2 subset of the taps. The
  four are computed as one 2x2 conv with 4 * Cout outputs (the unused taps are zero) and
  interleaved (depth to space).
  """

  features: int
  out_pad: int = 0
  param_init: str = "torch"
  dtype: networks.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_NxHxWxC):
    cin = x_NxHxWxC.shape[-1]
    kernel, bias = _conv_params(self, (3, 3, cin, self.features), transposed=True)
    x, kernel, bias = nn.dtypes.promote_dtype(x_NxHxWxC, kernel, bias, dtype=self.dtype)
    n, h, w, _ = x.shape
    x_pad = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))  # x[m + 1] = 0 past the edge
    zero = jnp.zeros_like(kernel[0, 0])
    tap = lambda p, d: _PHASE_TAP.get((p, d))
    # k[dr, dc, :, pr, pc, :] = kernel[tap(pr, dr), tap(pc, dc)] or 0.
    k = jnp.stack([jnp.stack([jnp.stack([jnp.stack([
        zero if tap(pr, dr) is None or tap(pc, dc) is None else kernel[tap(pr, dr), tap(pc, dc)]
        for pc in (0, 1)], axis=1) for pr in (0, 1)], axis=1) for dc in (0, 1)])
                   for dr in (0, 1)])  # 2 x 2 x Cin x 2 x 2 x Cout
    k = k.reshape(2, 2, cin, 4 * self.features)
    y = convolution.conv2d(x_pad, k, (1, 1), ((0, 0), (0, 0)))
    y = y.reshape(n, h, w, 2, 2, self.features)
    # N x H x W x pr x pc x C -> N x 2H x 2W x C, then crop the odd row/column past the edge.
    y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.features)
    y = y[:, :2 * h - 1 + self.out_pad, :2 * w - 1 + self.out_pad]
    return y + bias.reshape(1, 1, 1, -1)  # no implicit rank promotion


class OneChannelConvTranspose(nn.Module):
  """A stride-1 transposed conv to one output channel (the Bernoulli logits).

  Same parameters ('kernel' k x k x Cin x 1, 'bias') and function as
  nn.ConvTranspose(1, (k, k), padding=(pad,) * 2). A conv with a single output channel runs
  far below the CPU's matmul speed; here one matmul maps every pixel to its k * k tap
  contributions, which are then summed over shifted windows.
  """

  kernel_size: int
  pad: tuple[int, int]
  param_init: str = "torch"
  dtype: networks.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_NxHxWxC):
    k, cin = self.kernel_size, x_NxHxWxC.shape[-1]
    kernel, bias = _conv_params(self, (k, k, cin, 1), transposed=True)
    x, kernel, bias = nn.dtypes.promote_dtype(x_NxHxWxC, kernel, bias, dtype=self.dtype)
    _, h, w, _ = x.shape
    lo, hi = self.pad
    # u[..., t] = <x, kernel[t]>: each input pixel's contribution through tap t.
    u = jnp.einsum("nhwc,tc->nhwt", x, kernel[..., 0].reshape(k * k, cin))
    u = jnp.pad(u, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    oh, ow = h + lo + hi - k + 1, w + lo + hi - k + 1
    y = sum(u[:, i:i + oh, j:j + ow, i * k + j] for i in range(k) for j in range(k))
    return y[..., None] + bias.reshape(1, 1, 1, -1)  # no implicit rank promotion


class ConcatConvTranspose3x3(nn.Module):
  """A stride-1, pad-1 3x3 transposed conv of concat([y, skip]) as conv(y) + conv(skip).

  Same parameters ('kernel' 3x3x(Cy+Cs)xCout, 'bias') and function as
  nn.ConvTranspose(features, (3, 3), padding=((1, 1), (1, 1))) applied to the concatenation.
  The kernel is split along its input channels, so the skip's term (`project`, no bias) can be
  computed once per memory slot and added to the term of each sample (`__call__`).
  """

  y_features: int
  skip_features: int
  features: int
  param_init: str = "torch"
  dtype: networks.Dtype = jnp.float32

  def setup(self):
    self.kernel, self.bias = _conv_params(
        self, (3, 3, self.y_features + self.skip_features, self.features), transposed=True)

  def _conv(self, x_NxHxWxC, kernel):
    x, kernel = nn.dtypes.promote_dtype(x_NxHxWxC, kernel, dtype=self.dtype)
    # A stride-1 transposed conv with pad (1, 1) is the conv with the same kernel and pads.
    return convolution.conv2d(x, kernel, (1, 1), ((1, 1), (1, 1)))

  def project(self, skip_NxHxWxCs):
    """The skip's term, without the bias."""
    return self._conv(skip_NxHxWxCs, self.kernel[:, :, self.y_features:])

  def __call__(self, y_NxHxWxCy, skip_term_NxHxWxC):
    y = self._conv(y_NxHxWxCy, self.kernel[:, :, :self.y_features])
    bias = jnp.asarray(self.bias, y.dtype).reshape(1, 1, 1, -1)  # no implicit rank promotion
    return y + skip_term_NxHxWxC.astype(y.dtype) + bias


class Encoder(networks.Encoder):
  """`networks.Encoder` with its convs through `convolution.conv2d`."""

  conv_op = staticmethod(convolution.conv_general_dilated)


class Decoder(networks.Decoder):
  """`networks.Decoder` on the layers above; `project_skips` returns `SkipTerms`."""

  def project_skips(self, skips: networks.Skips) -> SkipTerms:
    return SkipTerms(self.tconv4.project(skips.a_NxH1xW1xC),
                     self.tconv2.project(skips.b_NxH2xW2xC))

  def _up(self, features, out_pad, name):
    return UpConv3x3(features, out_pad, param_init=self.param_init, dtype=self.dtype, name=name)

  def _merge(self, y_features, skip_features, features, name):
    return ConcatConvTranspose3x3(y_features, skip_features, features,
                                  param_init=self.param_init, dtype=self.dtype, name=name)

  def _merged(self, layer, y_NxHxWxC, term_NxHxWxC):
    return layer(y_NxHxWxC, term_NxHxWxC)

  def _same(self, features, name):
    # nn.ConvTranspose(3x3, padding 1) is nn.Conv with the same kernel and padding.
    return nn.Conv(features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name,
                   conv_general_dilated=convolution.conv_general_dilated,
                   **initializers.layer_kwargs(self.param_init, 9 * features))

  def _output(self, name):
    return OneChannelConvTranspose(2, (1, 1), param_init=self.param_init, dtype=self.dtype,
                                   name=name)
