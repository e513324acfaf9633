"""Model FLOPs counted by hand: the useful multiply-adds (2 FLOP each) of the reference layers.

Transposed convolutions are counted as the adjoint of a conv (input pixels x kernel taps x
in-channels x out-channels), i.e. without the zeros that a dilated implementation multiplies.
Elementwise work (ReLU, softplus, log-densities) and the address dot products are left out.
"""


def _conv(out_hw, cin, cout, kernel=3):
  return 2 * out_hw * out_hw * kernel * kernel * cin * cout


def encoder_flops(image_size=26, widths=(48, 64), hidden=100, out=128):
  w1, w2 = widths
  s1 = image_size
  s2 = (s1 + 1) // 2
  s3 = (s2 + 1) // 2
  s4 = (s3 + 1) // 2
  return (_conv(s1, 1, w1) + _conv(s2, w1, w1) + _conv(s2, w1, w1) + _conv(s3, w1, w2)
          + _conv(s3, w2, w2) + _conv(s4, w2, w2)
          + 2 * s4 * s4 * w2 * hidden + 2 * hidden * out)


def decoder_flops(image_size=26, widths=(48, 64), hidden=256, latent=64, code=64):
  w1, w2 = widths
  s2 = image_size // 2
  s3 = (s2 + 1) // 2
  s4 = (s3 + 1) // 2
  s5 = 2 * s2 - 1  # 25 for 26x26 images
  return (2 * (latent + code) * hidden + 2 * hidden * s4 * s4 * w2
          + _conv(s4, w2, w2)  # tconv1, counted on its input grid
          + _conv(s3, 2 * w2, w2)  # tconv2
          + _conv(s3, w2, w2)  # tconv3 (input grid)
          + _conv(s2, w1 + w2, w1)  # tconv4
          + _conv(s2, w1, w1)  # tconv5 (input grid)
          + _conv(s5, w1, w1)  # tconv6
          + 2 * s5 * s5 * w1 * 4)  # tconv7 (2x2, one output channel)


def heads_flops(embed=128, latent=64):
  # posterior mean and scale (2E -> Z), prior mean and scale (E -> Z), memory code g (E -> Z).
  return 2 * (2 * 2 * embed * latent + 3 * embed * latent)


def forward_flops(batch, memory, samples, image_size=26, num_dummies=2, embed=128, match=200):
  """One evaluation of the K log-weights of B episodes, encoding every slot once."""
  images = batch * (1 + memory) + num_dummies
  enc = images * (encoder_flops(image_size, out=embed) + encoder_flops(image_size, out=match))
  dec = batch * samples * (decoder_flops(image_size) + heads_flops(embed))
  return enc + dec


def train_step_flops(batch, memory, samples, **kw):
  """Forward plus backward, the backward counted as twice the forward (input and weight grads)."""
  return 3 * forward_flops(batch, memory, samples, **kw)
