"""The conv networks of the VMA model: the encoder (used for `e` and `h`) and the decoder.

Layouts are NHWC. For 26x26 images the spatial sizes are 26 -> 13 -> 7 -> 4 in the encoder and
4 -> 7 -> 13 -> 25 -> 26 in the decoder; any even size whose encoder bottleneck is 4x4
(26, 28, 30, 32) works the same way (the parameter count does not change). Padding matches
the reference (PyTorch) layers exactly: every 3x3 conv pads 1 on both sides; transposed convs
are the adjoints of those convs, with an output padding where an even size is wanted.

Speed: the decoder's stride-2 transposed convs are computed at stride 1 on the even/odd phases
of their output (`UpConv3x3`), the one-channel output layer as a matmul
(`OneChannelConvTranspose`), and the two layers that merge a skip split into the skip's term,
computed once per memory slot, and the sample's term (`ConcatConvTranspose3x3`); the other convs
go through `convolution.conv2d`, whose kernel gradient runs as matrix products on CPU (`Conv`
for the 3x3 layers). Each keeps the parameters and the function of the Flax layer it replaces
(see docs/performance.md for what this gains on CPU).

Initial values: `param_init` = "torch" (the reference's PyTorch defaults, each layer's fan-in
counted as PyTorch counts it for the layer it stands for) or "flax"; see `initializers`.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vma_jax import convolution
from vma_jax import initializers

Dtype = Any


class Skips(NamedTuple):
  """Feature maps of an image that the decoder receives: the wide bottleneck."""

  a_NxH1xW1xC: jax.Array  # after the 3rd conv: 48 x 13 x 13 for 26x26 inputs
  b_NxH2xW2xC: jax.Array  # after the 5th conv: 64 x 7 x 7


class Conv(nn.Module):
  """nn.Conv(features, kernel_size, strides, padding) with explicit padding, as `conv2d`.

  Same parameters ('kernel' KhxKwxCinxCout, 'bias') and function as the Flax layer (and its
  initial values with param_init="flax"); the kernel's gradient runs as matrix products
  (`convolution.conv2d`). A stride-1 transposed conv with padding (lo, hi) is this conv with
  the same kernel and padding (lo, hi): `transposed=True` marks that use, whose PyTorch fan-in
  counts output channels.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
  param_init: str = "torch"
  transposed: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_NxHxWxC):
    shape = (*self.kernel_size, x_NxHxWxC.shape[-1], self.features)
    kernel_init, bias_init = initializers.conv_init(self.param_init, shape,
                                                    transposed=self.transposed)
    kernel = self.param("kernel", kernel_init, shape, jnp.float32)
    bias = self.param("bias", bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x_NxHxWxC, kernel, bias, dtype=self.dtype)
    y = convolution.conv2d(x, kernel, self.strides, self.padding)
    return y + bias.reshape(1, 1, 1, -1)  # no implicit rank promotion


class Dense(nn.Module):
  """nn.Dense(features): same parameters ('kernel' DinxDout, 'bias') and function.

  Its initialisers see the input size, which PyTorch's bias init needs (with
  param_init="flax" the initial values are nn.Dense's). Like nn.Dense it maps the last axis:
  x_NxD may have more leading axes (the heads get BxKxD).
  """

  features: int
  param_init: str = "torch"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_NxD):
    kernel_init, bias_init = initializers.layer_init(self.param_init, x_NxD.shape[-1])
    kernel = self.param("kernel", kernel_init, (x_NxD.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", bias_init, (self.features,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x_NxD, kernel, bias, dtype=self.dtype)
    y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
    return y + bias.reshape((1,) * (y.ndim - 1) + (-1,))  # no implicit rank promotion


# Which 3x3 tap feeds output phase p (0 = even, 1 = odd) from input offset d (0 or +1):
# y[2m] = x[m] w[1] and y[2m+1] = x[m] w[0] + x[m+1] w[2] (the adjoint of a pad-1 stride-2 conv).
_PHASE_TAP = {(0, 0): 1, (1, 0): 0, (1, 1): 2}


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
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_NxHxWxC):
    k, cin = self.kernel_size, x_NxHxWxC.shape[-1]
    kernel_init, bias_init = initializers.conv_init(self.param_init, (k, k, cin, 1),
                                                    transposed=True)
    kernel = self.param("kernel", kernel_init, (k, k, cin, 1), jnp.float32)
    bias = self.param("bias", bias_init, (1,), jnp.float32)
    x, kernel, bias = nn.dtypes.promote_dtype(x_NxHxWxC, kernel, bias, dtype=self.dtype)
    n, h, w, _ = x.shape
    lo, hi = self.pad
    # u[..., t] = <x, kernel[t]>: each input pixel's contribution through tap t.
    u = jnp.einsum("nhwc,tc->nhwt", x, kernel[..., 0].reshape(k * k, cin))
    u = jnp.pad(u, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    oh, ow = h + lo + hi - k + 1, w + lo + hi - k + 1
    y = sum(u[:, i:i + oh, j:j + ow, i * k + j] for i in range(k) for j in range(k))
    return y[..., None] + bias.reshape(1, 1, 1, -1)  # no implicit rank promotion


class UpConv3x3(nn.Module):
  """A 3x3 stride-2 transposed conv with padding 1: n -> 2n - 1 + out_pad, without the zeros.

  Same parameters ('kernel' 3x3xCinxCout, 'bias') and the same function as
  nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 1 + out_pad),) * 2), which
  XLA lowers to a conv over an input dilated with zeros: three quarters of its products are
  with zeros, and its gradients are slow on CPU. Here the output is split into its four
  phases (even/odd row x even/odd column); each phase is a stride-1 conv of the undilated input
  with a 1x1, 1x2, 2x1 or 2x2 subset of the taps. The four are computed as one 2x2 conv with
  4 * Cout outputs (the unused taps are zero) and interleaved (depth to space).
  """

  features: int
  out_pad: int = 0
  param_init: str = "torch"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_NxHxWxC):
    cin = x_NxHxWxC.shape[-1]
    shape = (3, 3, cin, self.features)
    kernel_init, bias_init = initializers.conv_init(self.param_init, shape, transposed=True)
    kernel = self.param("kernel", kernel_init, shape, jnp.float32)
    bias = self.param("bias", bias_init, (self.features,), jnp.float32)
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


class Encoder(nn.Module):
  """x_NxHxW -> (features_NxF, Skips): six 3x3 convs, then dense 100 and dense `features`."""

  features: int
  widths: tuple[int, int] = (48, 64)
  hidden: int = 100
  param_init: str = "torch"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_NxHxW):
    w1, w2 = self.widths
    param_init, dtype = self.param_init, self.dtype
    # PyTorch's Conv2d(3, stride, padding=1).
    conv = lambda features, stride, name: Conv(
        features, strides=(stride, stride), param_init=param_init, dtype=dtype, name=name)
    dense = lambda features, name: Dense(features, param_init=param_init, dtype=dtype, name=name)
    y = x_NxHxW[..., None].astype(self.dtype)
    y = nn.relu(conv(w1, 1, "conv1")(y))
    y = nn.relu(conv(w1, 2, "conv2")(y))
    skip_a = y = nn.relu(conv(w1, 1, "conv3")(y))
    y = nn.relu(conv(w2, 2, "conv4")(y))
    skip_b = y = nn.relu(conv(w2, 1, "conv5")(y))
    y = nn.relu(conv(w2, 2, "conv6")(y))
    y = y.reshape(y.shape[0], -1)
    y = nn.relu(dense(self.hidden, "fc1")(y))
    features_NxF = dense(self.features, "fc2")(y)
    return features_NxF, Skips(skip_a, skip_b)


class SkipTerms(NamedTuple):
  """The skips' terms in the decoder's two merge layers (`ConcatConvTranspose3x3.project`).

  Linear in the skips of the retrieved slot m_a and independent of z: computed once per slot,
  they are shared by every sample that addresses it.
  """

  a_NxH1xW1xC: jax.Array  # skips.a through tconv4's skip channels: 48 x 13 x 13 for 26x26
  b_NxH2xW2xC: jax.Array  # skips.b through tconv2's skip channels: 64 x 7 x 7


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
  dtype: Dtype = jnp.float32

  def setup(self):
    shape = (3, 3, self.y_features + self.skip_features, self.features)
    kernel_init, bias_init = initializers.conv_init(self.param_init, shape, transposed=True)
    self.kernel = self.param("kernel", kernel_init, shape, jnp.float32)
    self.bias = self.param("bias", bias_init, (self.features,), jnp.float32)

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


def _conv_size(size, stride=2, kernel=3, pad=1):
  return (size + 2 * pad - kernel) // stride + 1


def _out_pad(size_in, size_out, stride=2, kernel=3, pad=1):
  out_pad = size_out - ((size_in - 1) * stride - 2 * pad + kernel)
  if not 0 <= out_pad < stride:
    raise ValueError(f"cannot upsample {size_in} -> {size_out} with a stride-{stride} layer")
  return out_pad


class Decoder(nn.Module):
  """([z, g(e(m_a))]_NxD, SkipTerms of m_a) -> Bernoulli logits_NxHxW for HxW = image_size^2.

  `project_skips` maps the encoder's skips of a slot to their terms in the two merge layers
  (tconv2, tconv4), `__call__` decodes from those terms, and `decode` chains the two (the
  decoder of a single sample). The split is exact: see `ConcatConvTranspose3x3`.
  """

  image_size: int = 26
  widths: tuple[int, int] = (48, 64)
  hidden: int = 256
  param_init: str = "torch"
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.image_size % 2:
      raise ValueError(f"image_size must be even, got {self.image_size}")
    w1, w2 = self.widths
    size_a = _conv_size(self.image_size)  # the encoder's stride-2 convs: 26 -> 13 -> 7 -> 4
    size_b = _conv_size(size_a)
    size_c = _conv_size(size_b)
    param_init, dtype = self.param_init, self.dtype
    dense = lambda features, name: Dense(features, param_init=param_init, dtype=dtype, name=name)
    up = lambda features, size_in, size_out, name: UpConv3x3(
        features, _out_pad(size_in, size_out), param_init=param_init, dtype=dtype, name=name)
    merge = lambda y_features, skip_features, features, name: ConcatConvTranspose3x3(
        y_features, skip_features, features, param_init=param_init, dtype=dtype, name=name)
    self.shape_c = (size_c, size_c, w2)
    self.fc1 = dense(self.hidden, "fc1")
    self.fc2 = dense(size_c * size_c * w2, "fc2")
    self.tconv1 = up(w2, size_c, size_b, "tconv1")
    self.tconv2 = merge(w2, w2, w2, "tconv2")
    self.tconv3 = up(w2, size_b, size_a, "tconv3")
    self.tconv4 = merge(w2, w1, w1, "tconv4")
    # 13 -> 25, then the 2x2 layer adds a row and a column: the output is 2 * size_a.
    self.tconv5 = up(w1, size_a, 2 * size_a - 1, "tconv5")
    # ConvTranspose2d(3, padding=1) and ConvTranspose2d(2): stride 1, input padded by k-1-p.
    self.tconv6 = Conv(w1, padding=((1, 1), (1, 1)), param_init=param_init, transposed=True,
                       dtype=dtype, name="tconv6")
    self.tconv7 = OneChannelConvTranspose(2, (1, 1), param_init=param_init, dtype=dtype,
                                          name="tconv7")

  def project_skips(self, skips: Skips) -> SkipTerms:
    """The terms of a slot's skips in tconv4 (a) and tconv2 (b): one per slot, not per sample."""
    return SkipTerms(self.tconv4.project(skips.a_NxH1xW1xC),
                     self.tconv2.project(skips.b_NxH2xW2xC))

  def __call__(self, input_NxI, terms: SkipTerms):
    y = nn.relu(self.fc1(input_NxI.astype(self.dtype)))
    y = self.fc2(y).reshape((-1,) + self.shape_c)  # no ReLU here (model.md)
    y = nn.relu(self.tconv1(y))
    y = nn.relu(self.tconv2(y, terms.b_NxH2xW2xC))
    y = nn.relu(self.tconv3(y))
    y = nn.relu(self.tconv4(y, terms.a_NxH1xW1xC))
    y = nn.relu(self.tconv5(y))
    y = nn.relu(self.tconv6(y))
    y = self.tconv7(y)
    return y[..., 0].astype(jnp.float32)

  def decode(self, input_NxI, skips: Skips):
    """Logits from the encoder's skips of each row's slot (projects, then decodes)."""
    return self(input_NxI, self.project_skips(skips))
