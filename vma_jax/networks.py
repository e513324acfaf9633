"""The conv networks of the VMA model: the encoder (used for `e` and `h`) and the decoder.

Layouts are NHWC. For 26x26 images the spatial sizes are 26 -> 13 -> 7 -> 4 in the encoder and
4 -> 7 -> 13 -> 25 -> 26 in the decoder; any even size whose encoder bottleneck is 4x4
(26, 28, 30, 32) works the same way (the parameter count does not change). Padding matches the reference (PyTorch) layers exactly:
every 3x3 conv pads 1 on both sides; transposed convs are the adjoints of those convs, with an
output padding where an even size is wanted.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class Skips(NamedTuple):
  """Feature maps of an image that the decoder receives: the wide bottleneck."""

  a_NxH1xW1xC: jax.Array  # after the 3rd conv: 48 x 13 x 13 for 26x26 inputs
  b_NxH2xW2xC: jax.Array  # after the 5th conv: 64 x 7 x 7


def _conv(features, stride, dtype, name):
  return nn.Conv(
      features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), dtype=dtype,
      name=name)


def _conv_transpose(features, kernel, stride, pad, out_pad, dtype, name):
  """PyTorch's ConvTranspose2d(kernel, stride, padding=pad, output_padding=out_pad)."""
  lo, hi = kernel - 1 - pad, kernel - 1 - pad + out_pad
  return nn.ConvTranspose(
      features, (kernel, kernel), strides=(stride, stride), padding=((lo, hi), (lo, hi)),
      dtype=dtype, name=name)


class Encoder(nn.Module):
  """x_NxHxW -> (features_NxF, Skips): six 3x3 convs, then dense 100 and dense `features`."""

  features: int
  widths: tuple[int, int] = (48, 64)
  hidden: int = 100
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_NxHxW):
    w1, w2 = self.widths
    y = x_NxHxW[..., None].astype(self.dtype)
    y = nn.relu(_conv(w1, 1, self.dtype, "conv1")(y))
    y = nn.relu(_conv(w1, 2, self.dtype, "conv2")(y))
    skip_a = y = nn.relu(_conv(w1, 1, self.dtype, "conv3")(y))
    y = nn.relu(_conv(w2, 2, self.dtype, "conv4")(y))
    skip_b = y = nn.relu(_conv(w2, 1, self.dtype, "conv5")(y))
    y = nn.relu(_conv(w2, 2, self.dtype, "conv6")(y))
    y = y.reshape(y.shape[0], -1)
    y = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(y))
    features_NxF = nn.Dense(self.features, dtype=self.dtype, name="fc2")(y)
    return features_NxF, Skips(skip_a, skip_b)


def _out_pad(size_in, size_out, stride=2, kernel=3, pad=1):
  out_pad = size_out - ((size_in - 1) * stride - 2 * pad + kernel)
  if not 0 <= out_pad < stride:
    raise ValueError(f"cannot upsample {size_in} -> {size_out} with a stride-{stride} layer")
  return out_pad


class Decoder(nn.Module):
  """([z, g(e(m_a))]_NxD, Skips of m_a) -> Bernoulli logits_NxHxW, with H = 2 * H1 (even)."""

  widths: tuple[int, int] = (48, 64)
  hidden: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h_NxD, skips: Skips):
    w1, w2 = self.widths
    size_a = skips.a_NxH1xW1xC.shape[1]
    size_b = skips.b_NxH2xW2xC.shape[1]
    size_c = (size_b + 1) // 2  # the encoder's last stride-2 conv
    y = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(h_NxD.astype(self.dtype)))
    y = nn.relu(nn.Dense(size_c * size_c * w2, dtype=self.dtype, name="fc2")(y))
    y = y.reshape(y.shape[0], size_c, size_c, w2)
    y = nn.relu(_conv_transpose(w2, 3, 2, 1, _out_pad(size_c, size_b), self.dtype, "tconv1")(y))
    y = jnp.concatenate([y, skips.b_NxH2xW2xC.astype(self.dtype)], axis=-1)
    y = nn.relu(_conv_transpose(w2, 3, 1, 1, 0, self.dtype, "tconv2")(y))
    y = nn.relu(_conv_transpose(w2, 3, 2, 1, _out_pad(size_b, size_a), self.dtype, "tconv3")(y))
    y = jnp.concatenate([y, skips.a_NxH1xW1xC.astype(self.dtype)], axis=-1)
    y = nn.relu(_conv_transpose(w1, 3, 1, 1, 0, self.dtype, "tconv4")(y))
    # 13 -> 25, then the 2x2 layer adds a row and a column: the output is 2 * size_a.
    y = nn.relu(_conv_transpose(w1, 3, 2, 1, 0, self.dtype, "tconv5")(y))
    y = nn.relu(_conv_transpose(w1, 3, 1, 1, 0, self.dtype, "tconv6")(y))
    y = _conv_transpose(1, 2, 1, 0, 0, self.dtype, "tconv7")(y)
    return y[..., 0].astype(jnp.float32)
