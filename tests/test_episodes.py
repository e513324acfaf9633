"""Tests of vma_jax.episodes: composition, determinism, coverage and statistics.

Exact checks use a synthetic split whose images encode their own flat index, so every
memory slot can be traced back to the image it came from; the real splits check the same
properties and the statistics of c and r, with tolerances from their standard errors.
"""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vma_jax import data as data_lib
from vma_jax import episodes


BITS = 12  # the synthetic images encode their flat index in the first 12 pixels


def _synthetic_split(num_classes=30, per_class=20, size=8, seed=0):
  """Images whose first BITS pixels spell their flat index; labels shuffled."""
  rng = np.random.default_rng(seed)
  labels_N = rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int32)
  n = labels_N.size
  bits_NxB = (np.arange(n)[:, None] >> np.arange(BITS)[None, :]) & 1
  images_NxHxW = np.zeros((n, size, size), np.uint8)
  images_NxHxW.reshape(n, -1)[:, :BITS] = bits_NxB
  return data_lib.OmniglotSplit(images_NxHxW, labels_N, np.zeros(n, np.int32))


def _decode(images_XxHxW):
  images = np.asarray(images_XxHxW)
  flat = images.reshape(images.shape[:-2] + (-1,))[..., :BITS].astype(np.int64)
  return (flat << np.arange(BITS)).sum(-1)


@pytest.fixture(scope="module")
def synthetic():
  split = _synthetic_split()
  return split, episodes.EpisodeData.from_split(split)


@pytest.fixture(scope="module")
def train_data(omniglot_train):
  return episodes.EpisodeData.from_split(omniglot_train)


@pytest.fixture(scope="module")
def test_data(omniglot_test):
  return episodes.EpisodeData.from_split(omniglot_test)


def _check_gathered(split, batch):
  """x and memory are the split's images with the labels and index reported."""
  x_index = np.asarray(batch.x_index_B)
  np.testing.assert_array_equal(_decode(batch.x_BxHxW), x_index)
  np.testing.assert_array_equal(np.asarray(batch.x_label_B), split.labels_N[x_index])
  memory_index = _decode(batch.memory_BxTxHxW)
  np.testing.assert_array_equal(np.asarray(batch.memory_index_BxT), memory_index)
  np.testing.assert_array_equal(np.asarray(batch.memory_labels_BxT), split.labels_N[memory_index])
  assert batch.distinct is None  # only training adds it
  for i in range(x_index.size):
    assert x_index[i] not in memory_index[i]  # the target is never in memory
    assert len(set(memory_index[i])) == memory_index.shape[1]  # no image twice
  return memory_index


def _check_types(batch, b, t, h):
  assert batch.x_BxHxW.shape == (b, h, h) and batch.x_BxHxW.dtype == jnp.float32
  assert batch.memory_BxTxHxW.shape == (b, t, h, h) and batch.memory_BxTxHxW.dtype == jnp.float32
  assert batch.x_label_B.shape == (b,) and batch.x_label_B.dtype == jnp.int32
  assert batch.memory_labels_BxT.shape == (b, t) and batch.memory_labels_BxT.dtype == jnp.int32
  assert batch.x_index_B.shape == (b,) and batch.x_index_B.dtype == jnp.int32
  assert batch.memory_index_BxT.shape == (b, t) and batch.memory_index_BxT.dtype == jnp.int32
  assert set(np.unique(np.asarray(batch.memory_BxTxHxW))) <= {0.0, 1.0}


def _check_train_composition(batch, memory_size, per_class):
  labels_BxT, x_label_B = np.asarray(batch.memory_labels_BxT), np.asarray(batch.x_label_B)
  for labels_T, x_label in zip(labels_BxT, x_label_B):
    counts = collections.Counter(labels_T.tolist())
    assert len(counts) == memory_size // per_class
    assert set(counts.values()) == {per_class}
    assert x_label in counts


# ----------------------------------------------------------------------------------------
# EpisodeData.


def test_from_split_groups_by_class(synthetic):
  split, data = synthetic
  assert (data.num_classes, data.per_class, data.num_images) == (30, 20, 600)
  for c in range(30):
    np.testing.assert_array_equal(split.labels_N[np.asarray(data.index_LxP[c])], c)
    np.testing.assert_array_equal(_decode(data.images_LxPxHxW[c]), np.asarray(data.index_LxP[c]))
  n = np.arange(600)
  np.testing.assert_array_equal(np.asarray(data.index_LxP)[data.class_N, data.slot_N], n)


def test_from_split_rejects_uneven_classes():
  split = _synthetic_split(num_classes=3)
  uneven = data_lib.OmniglotSplit(split.images_NxHxW[1:], split.labels_N[1:], split.alphabets_N[1:])
  with pytest.raises(ValueError, match="same number of images"):
    episodes.EpisodeData.from_split(uneven)


# ----------------------------------------------------------------------------------------
# Training episodes.


@pytest.mark.parametrize("memory_size,per_class", [(32, 4), (8, 2), (19, 19), (5, 1)])
def test_train_composition_synthetic(synthetic, memory_size, per_class):
  split, data = synthetic
  batch = episodes.sample_train_episodes(
      data, jax.random.key(1), batch_size=64, memory_size=memory_size, per_class=per_class
  )
  _check_types(batch, 64, memory_size, 8)
  _check_gathered(split, batch)
  _check_train_composition(batch, memory_size, per_class)


def test_train_composition_real(omniglot_train, train_data):
  batch = episodes.sample_train_episodes(
      train_data, jax.random.key(2), batch_size=256, memory_size=32, per_class=4
  )
  _check_types(batch, 256, 32, 26)
  _check_train_composition(batch, 32, 4)
  x_index = np.asarray(batch.x_index_B)
  np.testing.assert_array_equal(np.asarray(batch.x_BxHxW), omniglot_train.images_NxHxW[x_index])
  np.testing.assert_array_equal(np.asarray(batch.x_label_B), omniglot_train.labels_N[x_index])


def test_train_on_small1(omniglot_small1):
  data = episodes.EpisodeData.from_split(omniglot_small1)
  batch = episodes.sample_train_episodes(
      data, jax.random.key(3), batch_size=128, memory_size=32, per_class=4
  )
  _check_train_composition(batch, 32, 4)
  assert int(batch.memory_labels_BxT.max()) < 136


def test_train_targets_uniform_and_slots_shuffled(synthetic):
  _, data = synthetic
  sample = jax.jit(
      lambda key: episodes.sample_train_episodes(data, key, batch_size=500, memory_size=8,
                                                 per_class=2)
  )
  batches = [sample(jax.random.key(i)) for i in range(20)]
  x_index = np.concatenate([np.asarray(b.x_index_B) for b in batches])
  counts = np.bincount(np.asarray(data.class_N)[x_index], minlength=30)
  p, n = 1 / 30, x_index.size
  assert np.all(np.abs(counts - n * p) < 5 * math.sqrt(n * p * (1 - p))), counts
  # The target's class occupies 2 of 8 slots: in a shuffled memory, slot 0 holds it 1/4 of
  # the time, not always.
  first = np.concatenate([np.asarray(b.memory_labels_BxT[:, 0] == b.x_label_B) for b in batches])
  assert abs(first.mean() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / first.size)


def test_train_same_key_same_batch_different_key_differs(synthetic):
  _, data = synthetic
  kwargs = dict(batch_size=16, memory_size=8, per_class=4)
  a = episodes.sample_train_episodes(data, jax.random.key(5), **kwargs)
  b = episodes.sample_train_episodes(data, jax.random.key(5), **kwargs)
  c = episodes.sample_train_episodes(data, jax.random.key(6), **kwargs)
  np.testing.assert_array_equal(a.memory_BxTxHxW, b.memory_BxTxHxW)
  assert not np.array_equal(a.memory_labels_BxT, c.memory_labels_BxT)


@pytest.mark.parametrize(
    "memory_size,per_class,match",
    [(30, 4, "multiple"), (40, 20, "besides the target"), (32 * 4, 4, "only 30")],
)
def test_train_impossible_settings(synthetic, memory_size, per_class, match):
  _, data = synthetic
  with pytest.raises(ValueError, match=match):
    episodes.sample_train_episodes(
        data, jax.random.key(0), batch_size=2, memory_size=memory_size, per_class=per_class
    )


# ----------------------------------------------------------------------------------------
# Cell episodes.


@pytest.mark.parametrize("max_classes,memory_size",
                         [(1, 1), (1, 19), (2, 1), (2, 2), (2, 19), (5, 10)])
def test_cell_composition_synthetic(synthetic, max_classes, memory_size):
  split, data = synthetic
  targets = np.arange(600)
  batch = episodes.sample_cell_episodes(
      data, jax.random.key(7), targets, max_classes=max_classes, memory_size=memory_size
  )
  _check_types(batch, 600, memory_size, 8)
  np.testing.assert_array_equal(np.asarray(batch.x_index_B), targets)
  _check_gathered(split, batch)
  for labels_T, x_label in zip(np.asarray(batch.memory_labels_BxT), np.asarray(batch.x_label_B)):
    counts = collections.Counter(labels_T.tolist())
    assert x_label in counts and 1 <= len(counts) <= min(max_classes, memory_size)
    if max_classes == 1:
      assert set(counts) == {x_label}


def test_cell_independent_of_batch_size(synthetic):
  _, data = synthetic
  key, targets = jax.random.key(8), np.arange(100)
  whole = episodes.sample_cell_episodes(data, key, targets, max_classes=2, memory_size=10)
  parts = [
      episodes.sample_cell_episodes(data, key, targets[i:i + 7], max_classes=2, memory_size=10)
      for i in range(0, 100, 7)
  ]
  for field in episodes.Episodes._fields:
    if getattr(whole, field) is None:  # distinct
      continue
    np.testing.assert_array_equal(
        np.asarray(getattr(whole, field)),
        np.concatenate([np.asarray(getattr(p, field)) for p in parts]))
  # Reversed targets give the same episode for each target.
  backwards = episodes.sample_cell_episodes(data, key, targets[::-1], max_classes=2,
                                            memory_size=10)
  np.testing.assert_array_equal(np.asarray(backwards.memory_BxTxHxW)[::-1],
                                np.asarray(whole.memory_BxTxHxW))
  other = episodes.sample_cell_episodes(data, jax.random.key(9), targets, max_classes=2,
                                        memory_size=10)
  assert not np.array_equal(np.asarray(other.memory_labels_BxT),
                            np.asarray(whole.memory_labels_BxT))


def _cell_labels_over_split(data, key, max_classes, memory_size, batch_size=2048):
  """Every image of the split as the target once: (x_index_N, x_label_N, memory_labels_NxT)."""
  sample = jax.jit(
      lambda t: episodes.sample_cell_episodes(data, key, t, max_classes=max_classes,
                                              memory_size=memory_size))
  n = data.num_images
  out = []
  for start in range(0, n, batch_size):
    # Pad the last batch to the same shape (one compile); the padding is dropped.
    t = np.arange(start, start + batch_size) % n
    b = sample(t)
    keep = min(batch_size, n - start)
    out.append((np.asarray(b.x_index_B)[:keep], np.asarray(b.x_label_B)[:keep],
                np.asarray(b.memory_labels_BxT)[:keep]))
  return tuple(np.concatenate(parts) for parts in zip(*out))


def _within(count, n, p, z=5.0):
  return abs(count - n * p) < z * math.sqrt(n * p * (1 - p)) + 1e-9


def test_cell_statistics_c2_real(omniglot_test, test_data):
  t = 19
  x_index, x_label, labels_NxT = _cell_labels_over_split(test_data, jax.random.key(10), 2, t)
  n = omniglot_test.num_images
  np.testing.assert_array_equal(np.sort(x_index), np.arange(n))  # each target exactly once
  np.testing.assert_array_equal(x_label, omniglot_test.labels_N[x_index])
  r_N = (labels_NxT == x_label[:, None]).sum(1)
  num_classes_N = np.array([len(set(row)) for row in labels_NxT])
  assert set(num_classes_N) == {1, 2}
  assert np.all(r_N[num_classes_N == 1] == t)
  # c ~ U{1, 2}.
  assert _within((num_classes_N == 1).sum(), n, 0.5)
  # Given c = 2, r ~ U(1..T-1): each value within 5 standard errors, and the mean.
  r2 = r_N[num_classes_N == 2]
  counts = np.bincount(r2, minlength=t + 1)
  assert counts[0] == 0 and counts[t] == 0
  for r in range(1, t):
    assert _within(counts[r], r2.size, 1 / (t - 1)), (r, counts)
  sd = math.sqrt(((t - 1) ** 2 - 1) / 12)
  assert abs(r2.mean() - t / 2) < 5 * sd / math.sqrt(r2.size)


def test_cell_statistics_c5_synthetic(synthetic):
  # C = 5, T = 10: c ~ U(1..5); given c, T is split uniformly over the C(T-1, c-1)
  # compositions, so the target's share r has P(r) = C(T-r-1, c-2) / C(T-1, c-1).
  _, data = synthetic
  t, m, n = 10, 5, 600
  sample = jax.jit(lambda key: episodes.sample_cell_episodes(
      data, key, np.arange(n), max_classes=m, memory_size=t))
  c_all, r_all = [], []
  for seed in range(20):
    b = sample(jax.random.key(100 + seed))
    labels = np.asarray(b.memory_labels_BxT)
    c_all.append([len(set(row)) for row in labels])
    r_all.append((labels == np.asarray(b.x_label_B)[:, None]).sum(1))
  c_N, r_N = np.concatenate(c_all), np.concatenate(r_all)
  for c in range(1, m + 1):
    assert _within((c_N == c).sum(), c_N.size, 1 / m), np.bincount(c_N)
  r3 = r_N[c_N == 3]
  for r in range(1, t - 1):
    p = math.comb(t - r - 1, 1) / math.comb(t - 1, 2)
    assert _within((r3 == r).sum(), r3.size, p), (r, np.bincount(r3))


def test_cell_composition_real_small1(omniglot_small1):
  data = episodes.EpisodeData.from_split(omniglot_small1)
  x_index, x_label, labels_NxT = _cell_labels_over_split(data, jax.random.key(11), 1, 5, 1024)
  np.testing.assert_array_equal(np.sort(x_index), np.arange(2720))
  assert np.all(labels_NxT == x_label[:, None])


def test_cell_train_episodes(synthetic):
  split, data = synthetic
  batch = episodes.sample_cell_train_episodes(
      data, jax.random.key(12), batch_size=300, max_classes=2, memory_size=6
  )
  _check_types(batch, 300, 6, 8)
  _check_gathered(split, batch)
  counts = [len(set(row)) for row in np.asarray(batch.memory_labels_BxT)]
  assert set(counts) == {1, 2}
  assert len(set(np.asarray(batch.x_index_B).tolist())) > 200  # random targets


@pytest.mark.parametrize(
    "max_classes,memory_size,match",
    [(1, 20, "besides the target"), (2, 25, "besides the target"), (0, 5, "max_classes")],
)
def test_cell_impossible_settings(synthetic, max_classes, memory_size, match):
  _, data = synthetic
  with pytest.raises(ValueError, match=match):
    episodes.sample_cell_episodes(
        data, jax.random.key(0), np.arange(3), max_classes=max_classes, memory_size=memory_size
    )


# ----------------------------------------------------------------------------------------
# Large memories: cells R/T.


@pytest.mark.parametrize("same_class,memory_size", [(1, 1), (1, 19), (5, 100), (19, 400)])
def test_distractor_composition_synthetic(synthetic, same_class, memory_size):
  """R distinct images of x's class (never x), T - R distinct ones of the other classes."""
  split, data = synthetic
  targets = np.arange(0, 600, 7)
  batch = episodes.sample_distractor_episodes(
      data, jax.random.key(3), targets, same_class=same_class, memory_size=memory_size)
  _check_types(batch, len(targets), memory_size, 8)
  _check_gathered(split, batch)
  labels_BxT, index_BxT = np.asarray(batch.memory_labels_BxT), np.asarray(batch.memory_index_BxT)
  for labels_T, index_T, x_label, x_index in zip(labels_BxT, index_BxT,
                                                  np.asarray(batch.x_label_B), targets):
    assert np.sum(labels_T == x_label) == same_class
    assert len(set(index_T.tolist())) == memory_size and x_index not in index_T


def test_distractors_are_uniform_over_the_other_classes_images(synthetic):
  """Each image of another class is a distractor equally often: 5/400 over 600 targets."""
  _, data = synthetic
  batch = episodes.sample_distractor_episodes(
      data, jax.random.key(4), np.arange(600), same_class=5, memory_size=400)
  labels_BxT, index_BxT = np.asarray(batch.memory_labels_BxT), np.asarray(batch.memory_index_BxT)
  other = labels_BxT != np.asarray(batch.x_label_B)[:, None]
  counts_N = np.bincount(index_BxT[other], minlength=600)
  # Image n is a candidate for the 580 targets of other classes, chosen with p = 395 / 580.
  expected, sd = 580 * 395 / 580, math.sqrt(580 * (395 / 580) * (185 / 580))
  assert abs(counts_N.mean() - expected) < 1e-9  # every draw is some image
  assert np.all(np.abs(counts_N - expected) < 5 * sd)


def test_distractor_episodes_independent_of_batch(synthetic):
  _, data = synthetic
  key, targets = jax.random.key(5), np.arange(60)
  sample = lambda t: episodes.sample_distractor_episodes(data, key, t, same_class=2,
                                                         memory_size=50)
  whole = sample(targets)
  parts = np.concatenate([np.asarray(sample(targets[i:i + 9]).memory_index_BxT)
                          for i in range(0, 60, 9)])
  np.testing.assert_array_equal(np.asarray(whole.memory_index_BxT), parts)


@pytest.mark.parametrize("same_class,memory_size,match", [
    (20, 30, "besides the target"), (0, 5, "1 <= R <= T"), (6, 5, "1 <= R <= T"),
    (1, 600, "images of other classes")])
def test_distractor_impossible_settings(synthetic, same_class, memory_size, match):
  _, data = synthetic
  with pytest.raises(ValueError, match=match):
    episodes.sample_distractor_episodes(data, jax.random.key(0), np.arange(3),
                                        same_class=same_class, memory_size=memory_size)


# ----------------------------------------------------------------------------------------
# Empty memory.


def test_empty_memory(synthetic):
  split, data = synthetic
  key = jax.random.key(13)
  for batch in [
      episodes.sample_train_episodes(data, key, batch_size=4, memory_size=0, per_class=4),
      episodes.sample_cell_episodes(data, key, np.arange(4), max_classes=2, memory_size=0),
      episodes.sample_cell_train_episodes(data, key, batch_size=4, max_classes=1, memory_size=0),
  ]:
    _check_types(batch, 4, 0, 8)
    np.testing.assert_array_equal(_decode(batch.x_BxHxW), np.asarray(batch.x_index_B))
