"""A read written here alone, registered, and run through every command's functions: training
(with validation and the image grid), evaluation, a sample sheet and one-shot classification.

The read (docs/model.md, Adding a read): the memory slot nearest to x by <h(x), h(m_i)>,
chosen deterministically, then the VMA's p(z | m_a), p(x | z, m_a) and q(z | x, m_a). It has
no learned slots and no score term.
"""

import json
import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from helpers import mock_splits
from helpers import small_config
from vma_jax import checkpoints
from vma_jax import classify
from vma_jax import distributions
from vma_jax import evaluate
from vma_jax import one_shot
from vma_jax import reads
from vma_jax import sample
from vma_jax import train
from vma_jax.reads import base

# Every test reads one run, trained here with validation and the image grid: about 15 s in
# all on 2 cores.
pytestmark = pytest.mark.slow


class Encoding(NamedTuple):
  e_x_BxE: jax.Array  # e(x)
  scores_BxT: jax.Array  # <h(x), h(m_i)>
  memory_BxTxHxW: jax.Array


# Registered as "<module>.<name>": a command given this name imports the module first.
NAME = f"{__name__}.nearest"


@reads.register(NAME)
class NearestSlot(reads.Read):
  """a = argmax_i <h(x), h(m_i)> over the T >= 1 memory slots; z and x as the VMA's, given m_a."""

  def encode(self, x_BxHxW, memory_BxTxHxW, embed_slots=True, distinct=None) -> Encoding:
    del embed_slots, distinct  # hints this read does without
    h_x_BxA, _ = self.match(x_BxHxW)
    h_m_NxA, _ = self.match(memory_BxTxHxW.reshape((-1,) + x_BxHxW.shape[1:]))
    h_m_BxTxA = h_m_NxA.reshape(memory_BxTxHxW.shape[:2] + h_m_NxA.shape[1:])
    return Encoding(self.embed(x_BxHxW)[0], jnp.einsum("ba,bta->bt", h_x_BxA, h_m_BxTxA),
                    memory_BxTxHxW)

  def _read(self, memory_BxTxHxW, a_BxK):
    """e(m_a) and the skip terms of m_a."""
    m_a_BxKxHxW = jnp.take_along_axis(memory_BxTxHxW, a_BxK[:, :, None, None], axis=1)
    e_NxE, skips_N = self.embed(m_a_BxKxHxW.reshape((-1,) + m_a_BxKxHxW.shape[2:]))
    unflatten = lambda v: v.reshape(a_BxK.shape + v.shape[1:])
    return unflatten(e_NxE), jax.tree.map(unflatten, self.decoder.project_skips(skips_N))

  def log_weights(self, x_BxHxW, encoding: Encoding, keys_BxK) -> reads.LogWeights:
    a_BxK = jnp.broadcast_to(jnp.argmax(encoding.scores_BxT, axis=1)[:, None], keys_BxK.shape)
    e_m_BxKxE, terms_BxK = self._read(encoding.memory_BxTxHxW, a_BxK)
    e_x_BxKxE = jnp.broadcast_to(encoding.e_x_BxE[:, None], e_m_BxKxE.shape)
    q_mean, q_std = self.gaussian(self.posterior_mean, self.posterior_scale,
                                  jnp.concatenate([e_x_BxKxE, e_m_BxKxE], -1))
    p_mean, p_std = self.gaussian(self.prior_mean, self.prior_scale, e_m_BxKxE)
    z_BxKxZ = q_mean + q_std * base.normal(keys_BxK, self.latent_dim)
    kl_z_BxK = (distributions.gaussian_log_prob(z_BxKxZ, q_mean, q_std)
                - distributions.gaussian_log_prob(z_BxKxZ, p_mean, p_std))
    logits_BxKxHxW = self.decode(z_BxKxZ, e_m_BxKxE, terms_BxK)
    log_px_BxK = distributions.bernoulli_log_prob(x_BxHxW[:, None], logits_BxKxHxW)
    return reads.LogWeights(log_w_BxK=log_px_BxK - kl_z_BxK, log_px_BxK=log_px_BxK,
                            kl_z_BxK=kl_z_BxK, logits_BxKxHxW=logits_BxKxHxW, a_BxK=a_BxK)

  def generate(self, memory_BxTxHxW, key, num_samples, x_BxHxW=None):
    """z ~ p(z | m_a), a uniform over the memory, or the nearest slot to x."""
    slot_key, z_key = jax.random.split(key)
    shape = (memory_BxTxHxW.shape[0], num_samples)
    a_BxK = (jax.random.randint(slot_key, shape, 0, memory_BxTxHxW.shape[1]) if x_BxHxW is None
             else jnp.broadcast_to(jnp.argmax(self.encode(x_BxHxW, memory_BxTxHxW).scores_BxT,
                                              axis=1)[:, None], shape))
    e_m_BxKxE, terms_BxK = self._read(memory_BxTxHxW, a_BxK)
    p_mean, p_std = self.gaussian(self.prior_mean, self.prior_scale, e_m_BxKxE)
    z_BxKxZ = distributions.gaussian_sample(z_key, p_mean, p_std)
    return jax.nn.sigmoid(self.decode(z_BxKxZ, e_m_BxKxE, terms_BxK))

  def address(self, encoding: Encoding) -> reads.Address:
    # The scores whose argmax it reads, as logits over the memory slots alone.
    return reads.Address(encoding.scores_BxT, encoding.memory_BxTxHxW.shape[1])


def _config(**overrides):
  config = small_config(train__num_steps=2, train__validate_every=2, train__image_every=2,
                        **overrides)
  config.model.memory_read = NAME
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("nearest") / "run")
  train.train_and_evaluate(_config(), workdir, splits=mock_splits())
  return workdir


def test_trains_with_no_score_term_and_keeps_its_own_parameters(trained):
  params, step, config = checkpoints.restore_params(trained)
  assert step == 2 and config.model.memory_read == NAME
  assert "dummies" not in params["params"] and "embed" in params["params"]
  with open(os.path.join(trained, train.METRICS_FILE)) as f:
    records = [json.loads(line) for line in f]
  last = [r for r in records if "train/loss" in r][-1]
  # No score term: the loss is -L_K itself. The read has an address: its summaries are there.
  assert last["train/loss"] == pytest.approx(last["train/neg_bound"], rel=1e-6)
  assert last["train/frac_dummy"] == 0.0 and 0.0 <= last["train/frac_same_class"] <= 1.0
  assert any("valid/address_kl" in r for r in records)
  assert os.listdir(os.path.join(trained, train.IMAGE_DIR))


def test_evaluates(trained, monkeypatch):
  monkeypatch.setattr(evaluate.vma_data, "load_splits",
                      lambda data_config, splits: {s: mock_splits()[s] for s in splits})
  results = evaluate.evaluate_workdir(trained, cells="1:3,2/4", num_importance=4,
                                      num_targets=8, batch_size=4, chunk_size=2)
  assert [str(r.cell) for r in results] == ["1:3", "2/4"]
  for r in results:
    assert np.isfinite(r.bound) and r.mass_dummy == 0.0 and 0.0 <= r.mass_target_class <= 1.0
  assert os.path.isfile(os.path.join(trained, "eval", "results.md"))


def test_samples_a_sheet(trained, tmp_path):
  """A memory of three PNGs and a target: no learned slots, q over the memory alone."""
  ink_NxHxW = np.random.default_rng(0).random((4, 26, 26)) < 0.2
  (tmp_path / "memory").mkdir()
  for i, ink_HxW in enumerate(ink_NxHxW):
    folder = tmp_path / ("memory" if i < 3 else "")
    Image.fromarray(np.where(ink_HxW, 0, 255).astype(np.uint8), "L").save(folder / f"{i}.png")
  path, sheet = sample.sample_workdir(trained, memory_dir=str(tmp_path / "memory"),
                                      target=str(tmp_path / "3.png"), num_generated=2)
  assert sheet.dummies_DxHxW.shape == (0, 26, 26) and sheet.q_S.shape == (3,)
  assert sheet.posterior_NxHxW.shape == sheet.prior_NxHxW.shape == (2, 26, 26)
  with Image.open(path) as png:
    assert png.format == "PNG"


def test_classifies(trained, monkeypatch, tmp_path):
  """Two mock 3-way runs whose test images are their training images, shuffled."""
  images = mock_splits()["test"].images_NxHxW
  runs = []
  for r in range(2):
    train_JxHxW = images[3 * r:3 * r + 3]
    answer_Q = np.array([2, 0, 1], np.int32)
    runs.append(one_shot.OneShotRun(
        f"run{r + 1:02d}", tuple(f"class{j:02d}.png" for j in range(3)),
        tuple(f"item{q:02d}.png" for q in range(3)), train_JxHxW, train_JxHxW[answer_Q],
        answer_Q))
  mock_runs = one_shot.OneShotRuns(tuple(runs), source="mock")
  monkeypatch.setattr(classify.one_shot, "load_runs", lambda source, image_size: mock_runs)
  results, paths = classify.classify_workdir(
      trained, runs=str(tmp_path), classifiers="address,bound,combined,pixel",
      num_importance=2, batch_size=2, chunk_size=2, out=str(tmp_path / "classify"))
  assert [r.name for r in results] == ["address", "bound", "combined", "pixel"]
  assert results[-1].errors == 0  # the pixel classifier finds each image itself
  assert os.path.isfile(paths["results.md"]) and os.path.isfile(paths["wrong.png"])
