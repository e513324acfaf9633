"""The VMA networks and model: sizes, cost structure, sampling and the log-weight formula.

References: the parameter count and shapes of the PyTorch reproduction (docs/model.md,
Networks), method interception to count encoder and decoder work, and a hand recomputation
of log w_k from the model's pieces with scipy densities.
"""

import functools
import math

import jax


import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import special, stats  # noqa: E402

from vma_jax import model as vma_model  # noqa: E402
from vma_jax import networks  # noqa: E402
from vma_jax.cpu import convolution  # noqa: E402
from vma_jax.cpu import layers as cpu_layers  # noqa: E402


NUM_DUMMIES = 2


def _episodes(batch, memory_size, num_importance, image_size=26, seed=0):
  """Random binary (x_BxHxW, memory_BxTxHxW) and keys_BxK from `sample_keys`."""
  rng = np.random.default_rng(seed)
  x_BxHxW = rng.integers(0, 2, (batch, image_size, image_size)).astype(np.float32)
  memory_BxTxHxW = rng.integers(
      0, 2, (batch, memory_size, image_size, image_size)).astype(np.float32)
  episode_keys_B = jax.random.split(jax.random.key(seed), batch)
  return x_BxHxW, memory_BxTxHxW, vma_model.sample_keys(episode_keys_B, 0, num_importance)


def _param_shapes(model, batch=1, memory_size=1, num_importance=1):
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(
      batch, memory_size, num_importance, image_size=model.image_size)
  variables = jax.eval_shape(model.init, jax.random.key(0), x_BxHxW, memory_BxTxHxW, keys_BxK)
  return jax.tree.map(lambda leaf: leaf.shape, variables["params"])


def _encoder_shapes(features):
  conv = lambda c_in, c_out: {"kernel": (3, 3, c_in, c_out), "bias": (c_out,)}
  return {
      "conv1": conv(1, 48), "conv2": conv(48, 48), "conv3": conv(48, 48),
      "conv4": conv(48, 64), "conv5": conv(64, 64), "conv6": conv(64, 64),
      "fc1": {"kernel": (1024, 100), "bias": (100,)},
      "fc2": {"kernel": (100, features), "bias": (features,)},
  }


def _dense_shapes(n_in, n_out):
  return {"kernel": (n_in, n_out), "bias": (n_out,)}


def _tconv_shapes(size, c_in, c_out):
  return {"kernel": (size, size, c_in, c_out), "bias": (c_out,)}


EXPECTED_PARAM_SHAPES = {
    "embed": _encoder_shapes(128),  # e
    "match": _encoder_shapes(200),  # h
    "posterior_mean": _dense_shapes(256, 64),
    "posterior_scale": _dense_shapes(256, 64),
    "prior_mean": _dense_shapes(128, 64),
    "prior_scale": _dense_shapes(128, 64),
    "memory_code": _dense_shapes(128, 64),
    "decoder": {
        "fc1": _dense_shapes(128, 256),
        "fc2": _dense_shapes(256, 1024),
        "tconv1": _tconv_shapes(3, 64, 64),
        "tconv2": _tconv_shapes(3, 128, 64),  # after concatenating skip B
        "tconv3": _tconv_shapes(3, 64, 64),
        "tconv4": _tconv_shapes(3, 112, 48),  # after concatenating skip A
        "tconv5": _tconv_shapes(3, 48, 48),
        "tconv6": _tconv_shapes(3, 48, 48),
        "tconv7": _tconv_shapes(2, 48, 1),
    },
    "dummies": (NUM_DUMMIES, 26, 26),
}


def test_default_model_has_reference_parameter_count():
  """1,118,409 parameters, the count of the PyTorch reproduction at its default sizes."""
  shapes = _param_shapes(vma_model.VMA())
  count = sum(math.prod(shape) for shape in jax.tree.leaves(
      shapes, is_leaf=lambda leaf: isinstance(leaf, tuple)))
  assert count == 1_118_409


def test_default_model_parameter_shapes():
  """Every piece: encoders e (out 128) and h (out 200), heads, decoder, two 26x26 dummies."""
  assert _param_shapes(vma_model.VMA()) == EXPECTED_PARAM_SHAPES


def test_28x28_model_has_the_same_parameters():
  """28x28 images keep the 4x4 bottleneck: only the dummies change shape."""
  shapes = _param_shapes(vma_model.VMA(image_size=28))
  assert shapes == {**EXPECTED_PARAM_SHAPES, "dummies": (NUM_DUMMIES, 28, 28)}


def test_odd_image_size_is_rejected():
  with pytest.raises(ValueError, match="even"):
    _param_shapes(vma_model.VMA(image_size=27))


@pytest.mark.parametrize(
    "image_size, size_a, size_b", [(26, 13, 7), (28, 14, 7)])
def test_encoder_and_decoder_shapes(image_size, size_a, size_b):
  """Skip A 13x13x48, skip B 7x7x64 and 26x26 logits (docs/model.md, Networks); 28x28 works
  the same way."""
  x_NxHxW = jnp.zeros((3, image_size, image_size))
  encoder = networks.Encoder(128)
  (features_NxE, skips), _ = jax.eval_shape(
      encoder.init_with_output, jax.random.key(0), x_NxHxW)
  assert features_NxE.shape == (3, 128)
  assert skips.a_NxH1xW1xC.shape == (3, size_a, size_a, 48)
  assert skips.b_NxH2xW2xC.shape == (3, size_b, size_b, 64)
  decoder = networks.Decoder(image_size=image_size)
  logits_NxHxW, _ = jax.eval_shape(functools.partial(
      decoder.init_with_output, method="decode"), jax.random.key(0), jnp.zeros((3, 128)), skips)
  assert logits_NxHxW.shape == (3, image_size, image_size)


class _SpecEncoder(nn.Module):
  """docs/model.md's encoder from stock Flax layers: conv3x3 1->48, ReLU; conv3x3 48->48 stride 2,
  ReLU; conv3x3 48->48, ReLU [skip A]; conv3x3 48->64 stride 2, ReLU; conv3x3 64->64, ReLU
  [skip B]; conv3x3 64->64 stride 2, ReLU; flatten; dense 100, ReLU; dense out. Pad 1."""

  features: int

  @nn.compact
  def __call__(self, x_NxHxW):
    conv = lambda c, s, name: nn.Conv(c, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)),
                                      name=name)
    y = nn.relu(conv(48, 1, "conv1")(x_NxHxW[..., None]))
    y = nn.relu(conv(48, 2, "conv2")(y))
    skip_a = y = nn.relu(conv(48, 1, "conv3")(y))
    y = nn.relu(conv(64, 2, "conv4")(y))
    skip_b = y = nn.relu(conv(64, 1, "conv5")(y))
    y = nn.relu(conv(64, 2, "conv6")(y))
    y = nn.relu(nn.Dense(100, name="fc1")(y.reshape(y.shape[0], -1)))
    return nn.Dense(self.features, name="fc2")(y), (skip_a, skip_b)


class _SpecDecoder(nn.Module):
  """docs/model.md's decoder from stock Flax layers, each transposed conv as PyTorch's
  ConvTranspose2d(k, stride, padding p, output_padding o): padding (k-1-p, k-1-p+o).

  dense 256, ReLU; dense 1024 -> 64x4x4 (no ReLU); tconv 3x3 s2 -> 7x7, ReLU; concat skip B;
  tconv 3x3 128->64, ReLU; tconv 3x3 s2 -> 13x13, ReLU; concat skip A; tconv 3x3 112->48,
  ReLU; tconv 3x3 s2 -> 25x25, ReLU; tconv 3x3 48->48, ReLU; tconv 2x2 48->1 (pad 0) -> 26x26.
  """

  @nn.compact
  def __call__(self, h_NxD, skip_a, skip_b):
    tconv = lambda c, k, s, p, name: nn.ConvTranspose(
        c, (k, k), strides=(s, s), padding=((k - 1 - p, k - 1 - p),) * 2, name=name)
    y = nn.relu(nn.Dense(256, name="fc1")(h_NxD))
    y = nn.Dense(1024, name="fc2")(y).reshape(-1, 4, 4, 64)
    y = nn.relu(tconv(64, 3, 2, 1, "tconv1")(y))
    y = nn.relu(tconv(64, 3, 1, 1, "tconv2")(jnp.concatenate([y, skip_b], axis=-1)))
    y = nn.relu(tconv(64, 3, 2, 1, "tconv3")(y))
    y = nn.relu(tconv(48, 3, 1, 1, "tconv4")(jnp.concatenate([y, skip_a], axis=-1)))
    y = nn.relu(tconv(48, 3, 2, 1, "tconv5")(y))
    y = nn.relu(tconv(48, 3, 1, 1, "tconv6")(y))
    return tconv(1, 2, 1, 0, "tconv7")(y)[..., 0]


def _random_like(tree, rng, scale):
  return jax.tree.map(
      lambda p: jnp.asarray(rng.normal(scale=scale, size=p.shape), jnp.float32), tree)


ENCODERS = {"stock": networks.Encoder, "cpu": cpu_layers.Encoder}
DECODERS = {"stock": networks.Decoder, "cpu": cpu_layers.Decoder}


@pytest.mark.parametrize("layers", ["stock", "cpu"])
def test_encoder_is_model_md_encoder(layers):
  """e and h compute docs/model.md's encoder on the same parameters (features and both skips),
  on stock Flax layers and on the CPU layers."""
  rng = np.random.default_rng(5)
  x_NxHxW = jnp.asarray(rng.integers(0, 2, (3, 26, 26)), jnp.float32)
  encoder, spec = ENCODERS[layers](128), _SpecEncoder(128)
  params = jax.eval_shape(spec.init, jax.random.key(0), x_NxHxW)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(
      jnp.shape, jax.eval_shape(encoder.init, jax.random.key(0), x_NxHxW))
  params = _random_like(params, rng, 0.2)
  features_NxF, skips = encoder.apply(params, x_NxHxW)
  want_features, (want_a, want_b) = spec.apply(params, x_NxHxW)
  np.testing.assert_allclose(features_NxF, want_features, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(skips.a_NxH1xW1xC, want_a, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(skips.b_NxH2xW2xC, want_b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layers", ["stock", "cpu"])
def test_decoder_is_model_md_decoder(layers):
  """The decoder computes docs/model.md's decoder on the same parameters, on stock Flax layers and
  on the CPU layers (skip terms split off, phase-split transposed convs): a missing or extra
  ReLU, a wrong padding or a swapped skip shows up here."""
  rng = np.random.default_rng(6)
  h_NxD = jnp.asarray(rng.normal(size=(3, 128)), jnp.float32)
  skips = networks.Skips(jnp.asarray(rng.random((3, 13, 13, 48)), jnp.float32),
                         jnp.asarray(rng.random((3, 7, 7, 64)), jnp.float32))
  decoder, spec = DECODERS[layers](), _SpecDecoder()
  params = jax.eval_shape(spec.init, jax.random.key(0), h_NxD, *skips)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, jax.eval_shape(
      functools.partial(decoder.init, method="decode"), jax.random.key(0), h_NxD, skips))
  params = _random_like(params, rng, 0.1)
  logits_NxHxW = decoder.apply(params, h_NxD, skips, method="decode")
  want_NxHxW = spec.apply(params, h_NxD, *skips)
  assert want_NxHxW.shape == (3, 26, 26)
  np.testing.assert_allclose(logits_NxHxW, want_NxHxW, rtol=1e-4,
                             atol=1e-4 * float(jnp.max(jnp.abs(want_NxHxW))))


def test_log_weight_shapes_for_28x28_images():
  """The full model runs (in shape) on 28x28 episodes."""
  model = vma_model.VMA(image_size=28)
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(2, 3, 5, image_size=28)
  out, _ = jax.eval_shape(
      model.init_with_output, jax.random.key(0), x_BxHxW, memory_BxTxHxW, keys_BxK)
  assert out.log_w_BxK.shape == (2, 5)
  assert out.logits_BxKxHxW.shape == (2, 5, 28, 28)


def _rows_per_module(batch, memory_size, num_importance):
  """Rows of input that each encoder and the decoder see in one forward pass."""
  model = vma_model.VMA()
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(batch, memory_size, num_importance)
  rows = {"embed": 0, "match": 0, "decoder": 0}

  def count_rows(next_fn, args, kwargs, context):
    if context.method_name == "__call__" and context.module.name in rows:
      rows[context.module.name] += args[0].shape[0]
    return next_fn(*args, **kwargs)

  with nn.intercept_methods(count_rows):
    jax.eval_shape(model.init, jax.random.key(0), x_BxHxW, memory_BxTxHxW, keys_BxK)
  return rows


def test_memory_is_encoded_once_per_slot_not_per_sample():
  """With K >= T, e and h see each image once (x, T memory items, D dummies), whatever K is."""
  batch, memory_size = 2, 3
  rows_k3 = _rows_per_module(batch, memory_size, num_importance=3)
  rows_k7 = _rows_per_module(batch, memory_size, num_importance=7)
  for name in ("embed", "match"):
    assert rows_k3[name] == rows_k7[name] == batch * (1 + memory_size) + NUM_DUMMIES, name


@pytest.mark.parametrize("num_importance", [1, 4])
def test_with_fewer_samples_than_slots_e_sees_only_the_sampled_slots(num_importance):
  """K < T: h still sees every slot (q(a|x,M) needs it), e only x and the K sampled slots."""
  batch, memory_size = 2, 8
  rows = _rows_per_module(batch, memory_size, num_importance)
  assert rows["match"] == batch * (1 + memory_size) + NUM_DUMMIES
  assert rows["embed"] == batch * (1 + num_importance)


@pytest.mark.parametrize("memory_size, num_importance", [
    (5, 3),
    # More samples than slots, and no slot but the dummies: the same path's edge cases, each
    # compiling two programs of the full-size model (5-8 s on 2 cores).
    pytest.param(2, 6, marks=pytest.mark.slow), pytest.param(0, 2, marks=pytest.mark.slow)])
def test_sampled_slot_encoding_equals_every_slot_encoding(memory_size, num_importance):
  """Encoding every slot or only the sampled ones gives the same log-weights and gradients."""
  model = vma_model.VMA()
  variables = init_variables(model, seed=3)
  variables["params"]["dummies"] = jnp.asarray(
      np.random.default_rng(1).uniform(size=variables["params"]["dummies"].shape), jnp.float32)
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(3, memory_size, num_importance)

  def surrogate(variables, embed_slots):
    encoding = model.apply(variables, x_BxHxW, memory_BxTxHxW, embed_slots=embed_slots,
                           method="encode")
    weights = model.apply(variables, x_BxHxW, encoding, keys_BxK,
                          method="log_weights")
    # Both routes of the VIMCO gradient: through log w_k and through log q(a_k|x,M).
    return jnp.sum(weights.log_w_BxK) + jnp.sum(weights.log_q_a_BxK), weights

  # Jitted whole: op by op, each of the model's operations would compile alone.
  value_and_grad = jax.jit(jax.value_and_grad(surrogate, has_aux=True), static_argnums=1)
  (value_all, weights_all), grads_all = value_and_grad(variables, True)
  (value_sampled, weights_sampled), grads_sampled = value_and_grad(variables, False)
  np.testing.assert_array_equal(weights_all.a_BxK, weights_sampled.a_BxK)
  np.testing.assert_allclose(weights_all.log_w_BxK, weights_sampled.log_w_BxK, rtol=1e-5)
  np.testing.assert_allclose(value_all, value_sampled, rtol=1e-5)
  for path, g_all in jax.tree_util.tree_flatten_with_path(grads_all)[0]:
    g_sampled = functools.reduce(lambda tree, k: tree[k.key], path, grads_sampled)
    scale = float(jnp.max(jnp.abs(g_all))) + 1e-6
    np.testing.assert_allclose(g_sampled, g_all, atol=1e-4 * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.slow
def test_matmul_kernel_gradients_give_the_models_xla_gradients(monkeypatch):
  """Every conv's kernel gradient as matrix products (the recipe's path on CPU) or XLA's:
  the same gradient of log w and log q for every parameter of both encoders and the decoder.
  Two gradient programs of the full-size model (7-9 s on 2 cores); each layer's two paths are
  compared in the quick subset too (tests/test_convolution.py)."""
  model = vma_model.VMA(cpu_kernels="on")
  variables = init_variables(model, seed=4)
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(2, 3, 2)

  def grads(min_rows):
    monkeypatch.setattr(convolution, "_MIN_ROWS", min_rows)

    def surrogate(variables):
      weights = model.apply(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
      return jnp.sum(weights.log_w_BxK) + jnp.sum(weights.log_q_a_BxK)

    return jax.jit(jax.grad(surrogate))(variables)

  grads_xla, grads_matmul = grads(1 << 30), grads(0)
  for path, g_xla in jax.tree_util.tree_flatten_with_path(grads_xla)[0]:
    g_matmul = functools.reduce(lambda tree, k: tree[k.key], path, grads_matmul)
    scale = float(jnp.max(jnp.abs(g_xla))) + 1e-6
    np.testing.assert_allclose(g_matmul, g_xla, atol=1e-4 * scale,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("num_importance", [1, 7])
def test_decoder_runs_once_per_sample(num_importance):
  """The decoder sees B * K rows: one per (episode, sample)."""
  assert _rows_per_module(2, 3, num_importance)["decoder"] == 2 * num_importance


def init_variables(model, seed=0, **episode_sizes):
  """Variables of `model`'s structure, kernels ~ N(0, 1/fan_in) and zero biases, in numpy.

  The scale of Flax's default lecun_normal, without compiling the Flax initialisers (which
  costs more than the rest of a test on CPU); `test_dummies_are_initialised_to_zero` and the
  shape tests cover `model.init` itself.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *_episodes(
      1, 1, 1, image_size=model.image_size))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if jax.tree_util.keystr(path).endswith("['kernel']"):
      fan_in = math.prod(leaf.shape[:-1])
      return rng.normal(scale=1.0 / math.sqrt(fan_in), size=leaf.shape).astype(np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _forward_with_z(model, variables, x_BxHxW, memory_BxTxHxW, keys_BxK):
  """The model's LogWeights, and z_k read off the decoder's input [z, g(e(m_a))]."""
  decoder_inputs = []

  def record_decoder_input(next_fn, args, kwargs, context):
    if context.module.name == "decoder" and context.method_name == "__call__":
      decoder_inputs.append(args[0])  # B*K rows
    return next_fn(*args, **kwargs)

  with nn.intercept_methods(record_decoder_input):
    out = model.apply(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  return out, decoder_inputs[0][:, :model.latent_dim]


@functools.cache
def _initialised():
  """Default model and variables with random dummies and a flat q(a) (every slot is drawn)."""
  model = vma_model.VMA()
  params = dict(init_variables(model)["params"])
  rng = np.random.default_rng(7)
  params["dummies"] = rng.uniform(size=params["dummies"].shape).astype(np.float32)
  params["match"] = jax.tree.map(lambda p: p * 0.1, params["match"])
  return model, {"params": params}, jax.jit(functools.partial(_forward_with_z, model))


def test_dummies_are_initialised_to_zero():
  """The D dummy slots start as blank images (docs/model.md, Generative model and posterior)."""
  model = vma_model.VMA()
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(1, 1, 1)
  # Only the dummies are materialised: the other initialisers are dead code under jit.
  dummies = jax.jit(lambda key: model.init(key, x_BxHxW, memory_BxTxHxW, keys_BxK)[
      "params"]["dummies"])(jax.random.key(0))
  np.testing.assert_array_equal(dummies, np.zeros((NUM_DUMMIES, 26, 26)))


def test_same_keys_give_the_same_samples():
  model, variables, forward = _initialised()
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(2, 3, 8)
  first, _ = forward(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  second, _ = forward(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  np.testing.assert_array_equal(first.a_BxK, second.a_BxK)
  np.testing.assert_array_equal(first.log_w_BxK, second.log_w_BxK)


def test_different_keys_give_different_samples():
  model, variables, forward = _initialised()
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(2, 3, 8)
  _, _, other_keys_BxK = _episodes(2, 3, 8, seed=1)
  first, _ = forward(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  second, _ = forward(variables, x_BxHxW, memory_BxTxHxW, other_keys_BxK)
  assert np.any(first.a_BxK != second.a_BxK)
  assert np.all(first.log_w_BxK != second.log_w_BxK)  # continuous z: no ties


def test_sample_k_depends_only_on_its_own_key():
  """Permuting the keys along K permutes the samples: the basis of chunked evaluation."""
  model, variables, forward = _initialised()
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(2, 3, 8)
  first, _ = forward(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  reversed_, _ = forward(variables, x_BxHxW, memory_BxTxHxW, keys_BxK[:, ::-1])
  np.testing.assert_array_equal(first.a_BxK, reversed_.a_BxK[:, ::-1])
  np.testing.assert_allclose(first.log_w_BxK, reversed_.log_w_BxK[:, ::-1], rtol=1e-6)


def test_sample_keys_fold_in_the_sample_index():
  """keys[b, k] = fold_in(episode_keys[b], start + k)."""
  episode_keys_B = jax.random.split(jax.random.key(3), 2)
  keys_BxK = vma_model.sample_keys(episode_keys_B, 5, 3)
  assert keys_BxK.shape == (2, 3)
  for b in range(2):
    for k in range(3):
      np.testing.assert_array_equal(
          jax.random.key_data(keys_BxK[b, k]),
          jax.random.key_data(jax.random.fold_in(episode_keys_B[b], 5 + k)))


def test_empty_memory_uses_the_dummies_only():
  """T = 0: every address is a dummy slot and the log-weights are finite."""
  model, variables, forward = _initialised()
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(2, 0, 6)
  out, _ = forward(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  assert out.log_w_BxK.shape == (2, 6)
  assert np.all(np.isfinite(out.log_w_BxK))
  assert set(np.unique(out.a_BxK)) <= set(range(NUM_DUMMIES))


def _pieces(module, x_BxHxW, memory_BxTxHxW, a_BxK, z_BxKxZ):
  """The model's networks applied directly to the slot images m_{a_k} (no shared encoding)."""
  batch, num_importance = a_BxK.shape
  size = x_BxHxW.shape[-1]
  dummies_BxDxHxW = jnp.broadcast_to(
      module.dummies_DxHxW[None], (batch,) + module.dummies_DxHxW.shape)
  slots_BxSxHxW = jnp.concatenate([memory_BxTxHxW, dummies_BxDxHxW], axis=1)
  m_a_NxHxW = jnp.take_along_axis(slots_BxSxHxW, a_BxK[:, :, None, None], axis=1).reshape(
      -1, size, size)
  e_x_BxE, _ = module.embed(x_BxHxW)
  e_m_NxE, skips = module.embed(m_a_NxHxW)
  h_x_BxM, _ = module.match(x_BxHxW)
  h_slots_NxM, _ = module.match(slots_BxSxHxW.reshape(-1, size, size))
  address_logits_BxS = jnp.einsum(
      "bm,bsm->bs", h_x_BxM, h_slots_NxM.reshape(batch, -1, h_x_BxM.shape[-1]))
  e_x_NxE = jnp.repeat(e_x_BxE, num_importance, axis=0)
  q_input_Nx2E = jnp.concatenate([e_x_NxE, e_m_NxE], axis=-1)
  z_NxZ = z_BxKxZ.reshape(batch * num_importance, -1)
  logits_NxHxW = module.decoder.decode(
      jnp.concatenate([z_NxZ, module.memory_code(nn.relu(e_m_NxE))], axis=-1), skips)
  return dict(
      address_logits_BxS=address_logits_BxS,
      q_mean_NxZ=module.posterior_mean(q_input_Nx2E),
      q_raw_scale_NxZ=module.posterior_scale(q_input_Nx2E),
      p_mean_NxZ=module.prior_mean(e_m_NxE),
      p_raw_scale_NxZ=module.prior_scale(e_m_NxE),
      logits_NxHxW=logits_NxHxW)


def test_log_weights_decompose_as_in_the_model():
  """log w_k = log p(x|z,m_a) + log p(z|m_a) + log p(a) - log q(z|x,m_a) - log q(a|x,M).

  z_k is read off the decoder's input; every density is recomputed with scipy from the
  networks applied directly to x and to the image of slot a_k.
  """
  model, variables, forward = _initialised()
  batch, memory_size, num_importance = 2, 3, 8
  num_slots = memory_size + NUM_DUMMIES
  x_BxHxW, memory_BxTxHxW, keys_BxK = _episodes(batch, memory_size, num_importance, seed=5)

  out, z_NxZ = forward(variables, x_BxHxW, memory_BxTxHxW, keys_BxK)
  a_BxK = np.asarray(out.a_BxK)
  assert a_BxK.min() >= 0 and a_BxK.max() < num_slots
  assert a_BxK.min() < memory_size <= a_BxK.max(), "the draw should hit memory and dummy slots"
  z_BxKxZ = np.asarray(z_NxZ).reshape(batch, num_importance, -1)
  p = {k: np.asarray(v, np.float64) for k, v in jax.jit(functools.partial(
      model.apply, method=_pieces))(
          variables, x_BxHxW, memory_BxTxHxW, jnp.asarray(a_BxK), z_BxKxZ).items()}

  z_NxZ = z_BxKxZ.reshape(batch * num_importance, -1).astype(np.float64)
  x_NxHxW = np.repeat(x_BxHxW, num_importance, axis=0)
  softplus = lambda v: np.logaddexp(0.0, v)
  log_px_N = stats.bernoulli.logpmf(x_NxHxW, special.expit(p["logits_NxHxW"])).sum((1, 2))
  log_pz_N = stats.norm.logpdf(z_NxZ, p["p_mean_NxZ"], softplus(p["p_raw_scale_NxZ"])).sum(1)
  log_qz_N = stats.norm.logpdf(z_NxZ, p["q_mean_NxZ"], softplus(p["q_raw_scale_NxZ"])).sum(1)
  log_q_a_BxK = np.take_along_axis(
      special.log_softmax(p["address_logits_BxS"], axis=-1), a_BxK, axis=1)
  log_pa = -math.log(num_slots)
  as_BxK = lambda v_N: v_N.reshape(batch, num_importance)
  expected_log_w_BxK = (as_BxK(log_px_N) + as_BxK(log_pz_N) + log_pa - as_BxK(log_qz_N)
                        - log_q_a_BxK)

  np.testing.assert_allclose(out.log_px_BxK, as_BxK(log_px_N), rtol=1e-4)
  np.testing.assert_allclose(out.kl_z_BxK, as_BxK(log_qz_N - log_pz_N), rtol=1e-4, atol=1e-2)
  np.testing.assert_allclose(out.log_q_a_BxK, log_q_a_BxK, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out.log_w_BxK, expected_log_w_BxK, rtol=1e-4)
  # z_k is the reparameterised sample of q(z|x,m_{a_k}): standardised, it is N(0, I).
  eps_NxZ = (z_NxZ - p["q_mean_NxZ"]) / softplus(p["q_raw_scale_NxZ"])
  assert abs(eps_NxZ.mean()) < 0.15 and abs(eps_NxZ.std() - 1.0) < 0.1


def test_bfloat16_computation_keeps_float32_parameters_and_log_weights():
  """dtype sets the networks' computation only: parameters and log-densities stay float32."""
  model = vma_model.VMA(dtype="bfloat16")
  out, variables = jax.eval_shape(model.init_with_output, jax.random.key(0), *_episodes(2, 3, 4))
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
  for name in ("log_w_BxK", "log_q_a_BxK", "log_px_BxK", "kl_z_BxK", "logits_BxKxHxW"):
    assert getattr(out, name).dtype == jnp.float32, name
