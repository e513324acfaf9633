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


def _decoder_sizes(image_size):
  s2 = image_size // 2
  s3 = (s2 + 1) // 2
  s4 = (s3 + 1) // 2
  return s2, s3, s4, 2 * s2 - 1  # 13, 7, 4, 25 for 26x26 images


def skip_terms_flops(image_size=26, widths=(48, 64)):
  """The skip channels of tconv2 and tconv4 (`Decoder.project_skips`): once per slot."""
  w1, w2 = widths
  s2, s3, _, _ = _decoder_sizes(image_size)
  return _conv(s3, w2, w2) + _conv(s2, w1, w1)


def decoder_flops(image_size=26, widths=(48, 64), hidden=256, latent=64, code=64):
  """The whole decoder of one sample, skip channels included."""
  w1, w2 = widths
  s2, s3, s4, s5 = _decoder_sizes(image_size)
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


def forward_flops(batch, memory, samples, image_size=26, num_dummies=2, embed=128, match=200,
                  match_rows=None):
  """The K log-weights of B episodes, as `vma_jax.model.VMA` computes them.

  h runs on every image (x, the T memory items, the D dummies once per batch), or on
  `match_rows` rows (the U distinct images of `vma_jax.distinct`, padding included) and the
  dummies. e and the skip
  terms run on every slot once when K >= T, else on the K sampled slots of each episode
  (`model.embed_every_slot`); the rest of the decoder and the heads run once per sample.
  """
  images = (batch * (1 + memory) if match_rows is None else match_rows) + num_dummies
  match_flops = images * encoder_flops(image_size, out=match)
  if samples >= memory:
    slots = batch * memory + num_dummies
  else:
    slots = batch * samples
  embed_flops = (batch + slots) * encoder_flops(image_size, out=embed)
  per_sample = decoder_flops(image_size) - skip_terms_flops(image_size) + heads_flops(embed)
  return (match_flops + embed_flops + slots * skip_terms_flops(image_size)
          + batch * samples * per_sample)


def train_step_flops(batch, memory, samples, **kw):
  """Forward plus backward, the backward counted as twice the forward (input and weight grads)."""
  return 3 * forward_flops(batch, memory, samples, **kw)
