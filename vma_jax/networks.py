"""The conv networks of the VMA model, in stock Flax layers: the encoder (e and h), the decoder.

Layouts are NHWC: feature maps are N x H x W x C (N images, C channels; these C and N are
the convolution's, see docs/model.md, Notation and shape letters). For 26x26 images the
spatial sizes are 26 -> 13 -> 7 -> 4 in the encoder and 4 -> 7 -> 13 -> 25 -> 26 in the
decoder; any even size whose encoder bottleneck is 4x4
(26, 28, 30, 32) works the same way (the parameter count does not change). Padding matches
the reference (PyTorch) layers: every 3x3 conv pads 1 on both sides, and PyTorch's
ConvTranspose2d(k, stride, padding p, output_padding o) is nn.ConvTranspose with padding
(k-1-p, k-1-p+o) on the same kernel.

Initial values: `param_init` = "torch" (the reference's PyTorch defaults, passed to each layer
as its initialisers with the fan-in PyTorch counts) or "flax"; see `initializers`.

The layers are made by small factory methods (`_conv`, `_up`, `_merge`, ...), so that
`vma_jax.cpu.layers` can swap in faster equivalents on CPU (same parameters, same function)
without a second copy of the architecture.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vma_jax import errors
from vma_jax import initializers

Dtype = Any


class Skips(NamedTuple):
  """Feature maps of an image that the decoder receives: the wide bottleneck."""

  a_NxH1xW1xC: jax.Array  # after the 3rd conv: 48 x 13 x 13 for 26x26 inputs
  b_NxH2xW2xC: jax.Array  # after the 5th conv: 64 x 7 x 7


class Encoder(nn.Module):
  """x_NxHxW -> (features_NxF, Skips): six 3x3 convs, then dense 100 and dense `features`."""

  features: int
  widths: tuple[int, int] = (48, 64)
  hidden: int = 100
  param_init: str = "torch"
  dtype: Dtype = jnp.float32
  conv_op = None  # nn.Conv's conv_general_dilated; None: jax.lax's (a CPU variant's own)

  @nn.compact
  def __call__(self, x_NxHxW):
    w1, w2 = self.widths
    y = x_NxHxW[..., None].astype(self.dtype)
    y = nn.relu(self._conv(w1, 1, y, "conv1"))
    y = nn.relu(self._conv(w1, 2, y, "conv2"))
    skip_a = y = nn.relu(self._conv(w1, 1, y, "conv3"))
    y = nn.relu(self._conv(w2, 2, y, "conv4"))
    skip_b = y = nn.relu(self._conv(w2, 1, y, "conv5"))
    y = nn.relu(self._conv(w2, 2, y, "conv6"))
    y = y.reshape(y.shape[0], -1)
    y = nn.relu(self._dense(self.hidden, y, "fc1"))
    return self._dense(self.features, y, "fc2"), Skips(skip_a, skip_b)

  def _conv(self, features, stride, y, name):
    """PyTorch's Conv2d(3, stride, padding=1): fan-in 3 * 3 * Cin."""
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                   dtype=self.dtype, conv_general_dilated=self.conv_op, name=name,
                   **initializers.layer_kwargs(self.param_init, 9 * y.shape[-1]))(y)

  def _dense(self, features, y, name):
    return nn.Dense(features, dtype=self.dtype, name=name,
                    **initializers.layer_kwargs(self.param_init, y.shape[-1]))(y)


def _conv_size(size, stride=2, kernel=3, pad=1):
  return (size + 2 * pad - kernel) // stride + 1


def _out_pad(size_in, size_out, stride=2, kernel=3, pad=1):
  out_pad = size_out - ((size_in - 1) * stride - 2 * pad + kernel)
  if not 0 <= out_pad < stride:
    raise ValueError(f"cannot upsample {size_in} -> {size_out} with a stride-{stride} layer")
  return out_pad


class Decoder(nn.Module):
  """([z, g(e(m_a))]_NxI, skips of m_a) -> Bernoulli logits_NxHxW for HxW = image_size^2.

  dense 256, ReLU; dense -> 64x4x4 (no ReLU); tconv 3x3 s2 -> 7x7, ReLU; concat skip b, tconv
  3x3 -> 64, ReLU; tconv 3x3 s2 -> 13x13, ReLU; concat skip a, tconv 3x3 -> 48, ReLU; tconv
  3x3 s2 -> 25x25, ReLU; tconv 3x3 -> 48, ReLU; tconv 2x2 -> 1 channel, 26x26.

  `project_skips` maps the encoder's skips of a slot to what the two merge layers (tconv2,
  tconv4) take of them, once per slot; `__call__` decodes from that, and `decode` chains the
  two. Here that is the skips themselves, concatenated per sample; the CPU variant
  (`vma_jax.cpu.layers.Decoder`) computes the skips' terms of the merge layers once per slot.
  """

  input_dim: int = 128  # I, the width of [z, g(e(m_a))]
  image_size: int = 26
  widths: tuple[int, int] = (48, 64)
  hidden: int = 256
  param_init: str = "torch"
  dtype: Dtype = jnp.float32

  def setup(self):
    if self.image_size % 2:
      raise errors.ConfigError(f"config.data.image_size must be even, got {self.image_size}")
    w1, w2 = self.widths
    size_a = _conv_size(self.image_size)  # the encoder's stride-2 convs: 26 -> 13 -> 7 -> 4
    size_b = _conv_size(size_a)
    size_c = _conv_size(size_b)
    self.shape_c = (size_c, size_c, w2)
    self.fc1 = self._dense(self.hidden, self.input_dim, "fc1")
    self.fc2 = self._dense(size_c * size_c * w2, self.hidden, "fc2")
    self.tconv1 = self._up(w2, _out_pad(size_c, size_b), "tconv1")
    self.tconv2 = self._merge(w2, w2, w2, "tconv2")
    self.tconv3 = self._up(w2, _out_pad(size_b, size_a), "tconv3")
    self.tconv4 = self._merge(w2, w1, w1, "tconv4")
    # 13 -> 25, then the 2x2 layer adds a row and a column: the output is 2 * size_a.
    self.tconv5 = self._up(w1, _out_pad(size_a, 2 * size_a - 1), "tconv5")
    self.tconv6 = self._same(w1, "tconv6")
    self.tconv7 = self._output("tconv7")

  def __call__(self, input_NxI, skips):
    y = nn.relu(self.fc1(input_NxI.astype(self.dtype)))
    y = self.fc2(y).reshape((-1,) + self.shape_c)  # no ReLU here (the reference's decoder)
    y = nn.relu(self.tconv1(y))
    y = nn.relu(self._merged(self.tconv2, y, skips.b_NxH2xW2xC))
    y = nn.relu(self.tconv3(y))
    y = nn.relu(self._merged(self.tconv4, y, skips.a_NxH1xW1xC))
    y = nn.relu(self.tconv5(y))
    y = nn.relu(self.tconv6(y))
    y = self.tconv7(y)
    return y[..., 0].astype(jnp.float32)

  def project_skips(self, skips: Skips):
    """What the merge layers take of a slot's skips: computed once per slot, not per sample."""
    return skips

  def decode(self, input_NxI, skips: Skips):
    """Logits from the encoder's skips of each row's slot (projects, then decodes)."""
    return self(input_NxI, self.project_skips(skips))

  # The layers. PyTorch counts a transposed conv's fan-in over its output channels.

  def _init(self, fan_in):
    return initializers.layer_kwargs(self.param_init, fan_in)

  def _dense(self, features, fan_in, name):
    return nn.Dense(features, dtype=self.dtype, name=name, **self._init(fan_in))

  def _up(self, features, out_pad, name):
    """ConvTranspose2d(3, stride 2, padding 1, output_padding out_pad): n -> 2n - 1 + out_pad."""
    return nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding=((1, 1 + out_pad),) * 2,
                            dtype=self.dtype, name=name, **self._init(9 * features))

  def _merge(self, y_features, skip_features, features, name):
    """ConvTranspose2d(3, padding 1) of concat([y, skip]) (y_features + skip_features in)."""
    del y_features, skip_features  # the input width is the concatenation's
    return self._same(features, name)

  def _merged(self, layer, y_NxHxWxC, skip_NxHxWxC):
    return layer(jnp.concatenate([y_NxHxWxC, skip_NxHxWxC.astype(y_NxHxWxC.dtype)], axis=-1))

  def _same(self, features, name):
    """ConvTranspose2d(3, padding 1): the size stays."""
    return nn.ConvTranspose(features, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            name=name, **self._init(9 * features))

  def _output(self, name):
    """ConvTranspose2d(2) to one channel: n -> n + 1."""
    return nn.ConvTranspose(1, (2, 2), padding=((1, 1), (1, 1)), dtype=self.dtype, name=name,
                            **self._init(4))
