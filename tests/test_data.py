"""Tests of vma_jax.data: preprocessing, real-data counts, the cache, errors, mock data."""

import hashlib
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from vma_jax import data

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sha256(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _archive_copy(src_dir, dst_dir, sums=None):
  """dst_dir with links to the four archives and a SHA256SUMS of `sums` (name -> hash)."""
  os.makedirs(dst_dir, exist_ok=True)
  for name in data.ARCHIVES:
    os.symlink(os.path.join(os.path.abspath(src_dir), name), os.path.join(dst_dir, name))
  if sums is not None:
    with open(os.path.join(dst_dir, "SHA256SUMS"), "w") as f:
      f.writelines(f"{h}  {n}\n" for n, h in sums.items())
  return str(dst_dir)


def _listed_sums(archive_dir):
  return data.read_checksums(archive_dir)


def _tfds_checksums():
  from tensorflow_datasets.image_classification import omniglot  # pylint: disable=g-import-not-at-top

  return data._tfds_checksums(omniglot)  # pylint: disable=protected-access


def _tfds_progress_bars_on():
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top

  return tqdm_utils._active  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------------
# Preprocessing.


@pytest.mark.slow
def test_prepares_small_archives_with_tfds_own_checksums(archive_dir, request, tmp_path, capfd):
  """First in the module, and the session's split asked for only at the end: its own
  preparation (about 20 s) runs while another test process may be preparing the session's
  splits, rather than waiting for them."""
  # SHA256SUMS lists only the rebuilt archives; the original small zips are then checked
  # against the checksums TFDS ships.
  listed = _listed_sums(archive_dir)
  rebuilt = {n: listed[n] for n in ("images_background.zip", "images_evaluation.zip")}
  folder = _archive_copy(archive_dir, tmp_path / "archives", rebuilt)
  (tmp_path / "scratch").mkdir()
  capfd.readouterr()
  split = data.load_omniglot("small1", data_dir=str(tmp_path / "tfds"), archive_dir=folder,
                             scratch_dir=str(tmp_path / "scratch"))
  # stderr is not a terminal here: no progress bars (a line per update in a log file), and
  # TFDS's own setting is back as it was.
  assert not re.search(r"\d+%\|", capfd.readouterr().err)
  assert _tfds_progress_bars_on()
  omniglot_small1 = request.getfixturevalue("omniglot_small1")
  np.testing.assert_array_equal(split.images_NxHxW, omniglot_small1.images_NxHxW)
  np.testing.assert_array_equal(split.labels_N, omniglot_small1.labels_N)
  # Nothing was written next to the archives, and the scratch extraction is gone.
  assert sorted(os.listdir(folder)) == sorted(list(data.ARCHIVES) + ["SHA256SUMS"])
  assert sorted(os.listdir(tmp_path / "tfds")) == ["omniglot", "vma_jax"]
  assert not os.listdir(tmp_path / "scratch")


def test_archives_are_extracted_as_tfds_would_and_tfds_reuses_them(tmp_path, monkeypatch):
  """Each archive's members that TFDS's own extractor yields, with their bytes, at the path
  where TFDS's download manager finds them and extracts nothing."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core.download import extractor  # pylint: disable=g-import-not-at-top

  folder = tmp_path / "archives"
  folder.mkdir()
  for name in data.ARCHIVES:
    root = name[:-len(".zip")]
    with zipfile.ZipFile(folder / name, "w") as archive:
      archive.writestr(f"{root}/", b"")
      archive.writestr(f"{root}/Alphabet/character01/0101_01.png", root.encode())
      archive.writestr(f"{root}/Alphabet/character01/._0101_01.png", b"resource fork")
      archive.writestr(f"{root}/Alphabet/notes.txt~", b"backup")
      archive.writestr(".DS_Store", b"finder")
      archive.writestr(".trash/0101_02.png", b"deleted")
  extracted = tmp_path / "extracted"
  data._extract_for_tfds(str(folder), str(extracted))  # pylint: disable=protected-access

  def _tfds_extracts(*args, **kwargs):
    raise AssertionError("TFDS extracted an archive again")

  monkeypatch.setattr(extractor._Extractor, "extract", _tfds_extracts)  # pylint: disable=protected-access
  manager = tfds.download.DownloadManager(download_dir=str(tmp_path / "downloads"),
                                          extract_dir=str(extracted))
  for name in data.ARCHIVES:
    root = name[:-len(".zip")]
    path = pathlib.Path(manager.extract(str(folder / name)))
    ours = {str(f.relative_to(path)): f.read_bytes() for f in path.rglob("*") if f.is_file()}
    theirs = {member: handle.read() for member, handle in extractor.iter_zip(str(folder / name))}
    assert ours == theirs == {f"{root}/Alphabet/character01/0101_01.png": root.encode()}


@pytest.mark.parametrize("size", [26, 28])
def test_nearest_indices_formula(size):
  expected = np.floor((np.arange(size) + 0.5) * 105 / size).astype(int)
  np.testing.assert_array_equal(data.nearest_indices(105, size), expected)


@pytest.mark.parametrize("size", [26, 28])
def test_resize_matches_pil_nearest_on_real_images(archive_dir, size):
  # Real PNGs straight from the original small1 zip, decoded by PIL.
  with zipfile.ZipFile(os.path.join(archive_dir, "images_background_small1.zip")) as z:
    names = sorted(n for n in z.namelist() if n.endswith(".png"))[::50]
    pngs = [Image.open(io.BytesIO(z.read(n))) for n in names]
  assert len(pngs) > 40
  for png in pngs:
    decoded = np.asarray(png.convert("L"))
    assert set(np.unique(decoded)) <= {0, 255}
    ink = data.ink_from_decoded(decoded[None])
    ours = data.resize_nearest(ink, size)[0]
    pil = np.asarray(png.convert("L").resize((size, size), Image.NEAREST))
    np.testing.assert_array_equal(ours, (pil == 0).astype(np.uint8))


def test_ink_is_zero_in_both_encodings():
  decoded_01 = np.array([[[0, 1], [1, 0]]], np.uint8)  # PIL's 1-bit decoding
  decoded_0255 = decoded_01 * 255  # TensorFlow's
  expected = np.array([[[1, 0], [0, 1]]], np.uint8)
  np.testing.assert_array_equal(data.ink_from_decoded(decoded_01), expected)
  np.testing.assert_array_equal(data.ink_from_decoded(decoded_0255), expected)
  np.testing.assert_array_equal(data.ink_from_decoded(np.stack([decoded_0255] * 3, -1)), expected)


# ----------------------------------------------------------------------------------------
# Real data.


def _check_split(split, num_images, num_classes):
  assert split.images_NxHxW.shape == (num_images, 26, 26)
  assert split.images_NxHxW.dtype == np.uint8
  assert set(np.unique(split.images_NxHxW)) == {0, 1}
  assert split.labels_N.dtype == np.int32 and split.alphabets_N.dtype == np.int32
  assert split.num_classes == num_classes and split.image_size == 26
  np.testing.assert_array_equal(np.bincount(split.labels_N), np.full(num_classes, 20))
  assert np.all(np.diff(split.labels_N) >= 0)  # ordered by class
  # Ink is the minority of the pixels (paper = 0), and every image has some.
  assert 0.02 < split.images_NxHxW.mean() < 0.3
  assert split.images_NxHxW.reshape(num_images, -1).max(axis=1).min() == 1
  # A class is one character, so one alphabet.
  for c in range(0, num_classes, 97):
    assert len(np.unique(split.alphabets_N[split.labels_N == c])) == 1
  assert os.path.isfile(split.cache_path)


def test_real_train_counts(omniglot_train):
  _check_split(omniglot_train, 19280, 964)
  assert len(np.unique(omniglot_train.alphabets_N)) == 30


def test_real_test_counts(omniglot_test):
  _check_split(omniglot_test, 13180, 659)
  assert len(np.unique(omniglot_test.alphabets_N)) == 20


def test_train_and_test_alphabets_are_disjoint(omniglot_train, omniglot_test):
  assert not set(omniglot_train.alphabets_N) & set(omniglot_test.alphabets_N)


def test_small1_is_original_and_loads(archive_dir, omniglot_small1):
  # small1 is the original zip: its sha256 is TFDS's own.
  path = os.path.join(archive_dir, "images_background_small1.zip")
  assert _sha256(path) == _tfds_checksums()["images_background_small1.zip"]
  split = omniglot_small1
  assert split.images_NxHxW.shape == (2720, 26, 26)
  assert split.num_classes == 136
  np.testing.assert_array_equal(np.bincount(split.labels_N), np.full(136, 20))


def test_small1_images_are_train_images(omniglot_train, omniglot_small1):
  # small1 is a subset of images_background: every image occurs in train.
  train = {row.tobytes() for row in omniglot_train.images_NxHxW}
  assert all(row.tobytes() in train for row in omniglot_small1.images_NxHxW[::20])


def test_braille_duplicate_is_kept(omniglot_train):
  # Braille character01 has identical drawings for two drawers in the original data.
  packed = {}
  for row, label in zip(omniglot_train.images_NxHxW, omniglot_train.labels_N):
    packed.setdefault((int(label), row.tobytes()), 0)
    packed[(int(label), row.tobytes())] += 1
  assert max(packed.values()) >= 2


def test_second_load_is_fast_and_does_not_import_tensorflow(omniglot_train, omniglot_data_dir):
  code = (
      "import time, sys, json; t = time.perf_counter();"
      "from vma_jax import data;"
      f"s = data.load_omniglot('train', data_dir={omniglot_data_dir!r}, "
      "archive_dir='/nonexistent');"
      "print(json.dumps({'seconds': time.perf_counter() - t, 'n': s.num_images,"
      " 'tf': 'tensorflow' in sys.modules, 'tfds': 'tensorflow_datasets' in sys.modules}))"
  )
  out = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
  )
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["n"] == 19280
  assert not result["tf"] and not result["tfds"]
  assert result["seconds"] < 2.0, result


def test_cli_prints_json_summary(omniglot_train, omniglot_test, omniglot_data_dir, archive_dir):
  env = dict(os.environ, TFDS_DATA_DIR=omniglot_data_dir, VMA_OMNIGLOT_DIR=archive_dir)
  out = subprocess.run(
      [sys.executable, "-m", "vma_jax.data", "--image_size", "26"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True,
  )
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary["train"]["num_images"] == 19280 and summary["train"]["num_classes"] == 964
  assert summary["test"]["num_images"] == 13180 and summary["test"]["num_classes"] == 659
  assert summary["train"]["image_size"] == 26
  assert summary["train"]["cache_path"] == omniglot_train.cache_path


def test_image_size_28(omniglot_small1, omniglot_data_dir, archive_dir):
  split = data.load_omniglot(
      "small1", image_size=28, data_dir=omniglot_data_dir, archive_dir=archive_dir
  )
  assert split.images_NxHxW.shape == (2720, 28, 28)
  assert split.cache_path != omniglot_small1.cache_path
  np.testing.assert_array_equal(split.labels_N, omniglot_small1.labels_N)
  assert set(np.unique(split.images_NxHxW)) == {0, 1}


def test_load_splits_and_config(omniglot_train, omniglot_test, omniglot_data_dir, archive_dir):
  config = data.get_data_config()
  assert (config.archive_dir, config.data_dir, config.image_size) == ("", "", 26)
  config.archive_dir, config.data_dir = archive_dir, omniglot_data_dir
  splits = data.load_splits(config)
  assert set(splits) == {"train", "test"}
  np.testing.assert_array_equal(splits["train"].images_NxHxW, omniglot_train.images_NxHxW)
  np.testing.assert_array_equal(splits["test"].labels_N, omniglot_test.labels_N)


def test_test_split_alone_loads_from_its_cache(omniglot_test, tmp_path, monkeypatch):
  """A machine given only the test split's cache can evaluate: the train split is not read."""
  data_dir = tmp_path / "data"
  cache = pathlib.Path(data.cache_path(str(data_dir), "test", 26))
  cache.parent.mkdir(parents=True)
  cache.write_bytes(pathlib.Path(omniglot_test.cache_path).read_bytes())
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # no preparation possible
  config = data.get_data_config()
  config.data_dir, config.archive_dir = str(data_dir), str(tmp_path / "no_archives")
  splits = data.load_splits(config, splits=("test",))
  assert list(splits) == ["test"]
  np.testing.assert_array_equal(splits["test"].images_NxHxW, omniglot_test.images_NxHxW)
  with pytest.raises(data.DataError):
    data.load_splits(config)  # the train split has no cache there


def test_verify_archives_falls_back_to_tfds_checksums(archive_dir, tmp_path):
  listed = _listed_sums(archive_dir)
  rebuilt = {n: listed[n] for n in ("images_background.zip", "images_evaluation.zip")}
  folder = _archive_copy(archive_dir, tmp_path / "archives", rebuilt)
  got = data.verify_archives(folder, _tfds_checksums())
  assert got == {n: listed[n] for n in data.ARCHIVES}


# ----------------------------------------------------------------------------------------
# Errors: each names the file, what was expected and what to do.


def test_error_missing_folder(tmp_path, monkeypatch):
  monkeypatch.delenv("VMA_OMNIGLOT_DIR", raising=False)
  missing = str(tmp_path / "no_such_folder")
  with pytest.raises(data.DataError) as e:
    data.load_omniglot("train", data_dir=str(tmp_path / "tfds"), archive_dir=missing)
  msg = str(e.value)
  assert missing in msg and "does not exist" in msg
  assert "images_background.zip" in msg and "VMA_OMNIGLOT_DIR" in msg


def test_error_missing_scratch_folder(tmp_path):
  missing = str(tmp_path / "no_scratch")
  with pytest.raises(data.DataError, match=f"scratch folder {missing} does not exist: create it"):
    data.load_omniglot("train", data_dir=str(tmp_path / "tfds"), scratch_dir=missing)
  result = subprocess.run(
      [sys.executable, "-m", "vma_jax.data", f"--data_dir={tmp_path / 'tfds'}",
       f"--scratch_dir={missing}"], cwd=REPO_ROOT, capture_output=True, text=True)
  assert result.returncode == 1
  assert result.stderr.startswith(f"error: scratch folder {missing} does not exist")
  assert "Traceback" not in result.stderr


def test_error_missing_archive(archive_dir, tmp_path):
  folder = _archive_copy(archive_dir, tmp_path / "archives", _listed_sums(archive_dir))
  os.remove(os.path.join(folder, "images_evaluation.zip"))
  with pytest.raises(data.DataError) as e:
    data.load_omniglot("train", data_dir=str(tmp_path / "tfds"), archive_dir=folder)
  msg = str(e.value)
  assert os.path.join(folder, "images_evaluation.zip") in msg and "missing" in msg
  assert "Copy it" in msg


def test_error_wrong_checksum_in_sums(archive_dir, tmp_path):
  sums = _listed_sums(archive_dir)
  sums["images_background.zip"] = "0" * 64
  folder = _archive_copy(archive_dir, tmp_path / "archives", sums)
  with pytest.raises(data.DataError) as e:
    data.load_omniglot("train", data_dir=str(tmp_path / "tfds"), archive_dir=folder)
  msg = str(e.value)
  assert os.path.join(folder, "images_background.zip") in msg
  assert "0" * 64 in msg and _listed_sums(archive_dir)["images_background.zip"] in msg
  assert "SHA256SUMS" in msg and "copy it again" in msg


def test_error_tampered_archive(archive_dir, tmp_path):
  folder = _archive_copy(archive_dir, tmp_path / "archives", _listed_sums(archive_dir))
  target = os.path.join(folder, "images_background_small1.zip")
  os.remove(target)
  blob = bytearray(open(os.path.join(archive_dir, "images_background_small1.zip"), "rb").read())
  blob[len(blob) // 2] ^= 0xFF
  open(target, "wb").write(blob)
  with pytest.raises(data.DataError) as e:
    data.load_omniglot("test", data_dir=str(tmp_path / "tfds"), archive_dir=folder)
  msg = str(e.value)
  assert target in msg and hashlib.sha256(blob).hexdigest() in msg
  assert _listed_sums(archive_dir)["images_background_small1.zip"] in msg


def test_error_corrupt_archive(archive_dir, tmp_path):
  # A truncated zip whose SHA256SUMS line matches it: the checksum passes, the zip does not.
  sums = _listed_sums(archive_dir)
  folder = _archive_copy(archive_dir, tmp_path / "archives")
  target = os.path.join(folder, "images_background_small2.zip")
  os.remove(target)
  blob = open(os.path.join(archive_dir, "images_background_small2.zip"), "rb").read()[:-5000]
  open(target, "wb").write(blob)
  sums["images_background_small2.zip"] = hashlib.sha256(blob).hexdigest()
  with open(os.path.join(folder, "SHA256SUMS"), "w") as f:
    f.writelines(f"{h}  {n}\n" for n, h in sums.items())
  with pytest.raises(data.DataError) as e:
    data.load_omniglot("train", data_dir=str(tmp_path / "tfds"), archive_dir=folder)
  msg = str(e.value)
  assert target in msg and "not a readable Omniglot zip" in msg and "Copy it again" in msg


def test_error_unparseable_sums(archive_dir, tmp_path):
  folder = _archive_copy(archive_dir, tmp_path / "archives")
  with open(os.path.join(folder, "SHA256SUMS"), "w") as f:
    f.write("not a checksum line\n")
  with pytest.raises(data.DataError, match="SHA256SUMS, line 1"):
    data.verify_archives(folder, {})


def test_error_without_tfds(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(data.DataError, match=r"pip install -e \.` installs both"):
    data.load_omniglot("train", data_dir=str(tmp_path), archive_dir=str(tmp_path))


def test_error_corrupt_cache(tmp_path):
  path = data.cache_path(str(tmp_path), "train", 26)
  os.makedirs(os.path.dirname(path))
  open(path, "wb").write(b"not an npz")
  with pytest.raises(data.DataError) as e:
    data.load_omniglot("train", data_dir=str(tmp_path))
  assert path in str(e.value) and "Delete it" in str(e.value)


def test_bad_arguments():
  with pytest.raises(ValueError, match="split"):
    data.load_omniglot("validation")
  with pytest.raises(ValueError, match="image_size"):
    data.load_omniglot("train", image_size=0)


# ----------------------------------------------------------------------------------------
# The cache and the TFDS pipeline, on mock data.


def test_cache_write_is_atomic(tmp_path, monkeypatch):
  path = data.cache_path(str(tmp_path), "train", 26)

  def failing_savez(f, **arrays):
    f.write(b"partial")
    raise KeyboardInterrupt

  monkeypatch.setattr(np, "savez", failing_savez)
  with pytest.raises(KeyboardInterrupt):
    data._write_cache(  # pylint: disable=protected-access
        path, np.zeros((1, 2, 2), np.uint8), np.zeros(1, np.int32), np.zeros(1, np.int32))
  assert os.listdir(os.path.dirname(path)) == []


def _mock_examples(num_classes=5, per_class=20):
  """Deterministic 105x105 drawings: class k is a bar at row 10k, drawer j a dot at col 5j."""
  rng = np.random.default_rng(0)
  images, labels, alphabets = [], [], []
  for k in range(num_classes):
    for j in range(per_class):
      img = np.full((105, 105, 3), 255, np.uint8)  # paper = 255, as TensorFlow decodes
      img[10 * k:10 * k + 4, :] = 0
      img[80:84, 5 * j:5 * j + 3] = 0
      images.append(img)
      labels.append(100 + 7 * k)  # global TFDS labels, not contiguous
      alphabets.append(3)
  perm = rng.permutation(len(labels))  # TFDS yields examples shuffled
  return np.stack(images)[perm], np.array(labels)[perm], np.array(alphabets)[perm]


def test_mock_tfds_random_examples(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  monkeypatch.delenv("VMA_OMNIGLOT_DIR", raising=False)
  with tfds.testing.mock_data(num_examples=30):
    split = data.load_omniglot("train", data_dir=str(tmp_path))
  assert split.images_NxHxW.shape == (30, 26, 26)
  assert set(np.unique(split.images_NxHxW)) <= {0, 1}
  assert split.labels_N.min() == 0 and split.labels_N.max() == split.num_classes - 1
  assert set(np.unique(split.labels_N)) == set(range(split.num_classes))
  assert os.path.isfile(split.cache_path) and split.cache_path.startswith(str(tmp_path))


def test_mock_tfds_structured_examples(tmp_path, monkeypatch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  monkeypatch.delenv("VMA_OMNIGLOT_DIR", raising=False)
  images, labels, alphabets = _mock_examples()

  def as_dataset(self, split, **kwargs):
    del self, split, kwargs
    return tf.data.Dataset.from_tensor_slices({
        "image": images, "label": labels, "alphabet": alphabets,
        "alphabet_char_id": np.zeros_like(labels),
    })

  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    split = data.load_omniglot("test", image_size=28, data_dir=str(tmp_path))
  assert split.images_NxHxW.shape == (100, 28, 28)
  np.testing.assert_array_equal(split.labels_N, np.repeat(np.arange(5), 20))
  np.testing.assert_array_equal(split.alphabets_N, np.full(100, 3))
  expected = data.resize_nearest((images[..., 0] == 0).astype(np.uint8), 28)
  order = np.lexsort((np.arange(100), labels))  # by class; drawers differ in pixels only
  got = {(int(l), x.tobytes()) for l, x in zip(split.labels_N, split.images_NxHxW)}
  want = {(int(np.searchsorted(np.unique(labels), l)), x.tobytes())
          for l, x in zip(labels[order], expected[order])}
  assert got == want
  # The cache is found the second time, TFDS untouched.
  again = data.load_omniglot("test", image_size=28, data_dir=str(tmp_path))
  np.testing.assert_array_equal(again.images_NxHxW, split.images_NxHxW)
  assert again.cache_path == split.cache_path
