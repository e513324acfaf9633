"""Lake et al.'s one-shot runs: read as distributed (zip or folder), preprocessed as the
training data, and one clear error naming the file for everything malformed."""

import io
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from helpers import REPO_ROOT
from vma_jax import data
from vma_jax import one_shot

RUNS_DIR = os.environ.get("VMA_ONE_SHOT_DIR") or str(
    REPO_ROOT.parent / "shared" / "data" / "omniglot_one_shot")
RUNS_ZIP = os.path.join(RUNS_DIR, one_shot.RUNS_FILE)


@pytest.fixture(scope="module")
def runs_zip() -> str:
  if not os.path.isfile(RUNS_ZIP):
    pytest.skip(f"{RUNS_ZIP} not found: it is python/one-shot-classification/all_runs.zip of "
                "the brendenlake/omniglot repository")
  return RUNS_ZIP


@pytest.fixture(scope="module")
def loaded(runs_zip) -> one_shot.OneShotRuns:
  return one_shot.load_runs(runs_zip)


@pytest.fixture
def extracted(runs_zip, tmp_path) -> str:
  """The zip extracted to a folder the test may damage."""
  with zipfile.ZipFile(runs_zip) as z:
    z.extractall(tmp_path / "all_runs")
  return str(tmp_path / "all_runs")


def test_the_real_runs(loaded, runs_zip):
  assert len(loaded.runs) == 20 and [r.name for r in loaded.runs] == [
      f"run{i:02d}" for i in range(1, 21)]
  assert loaded.train_GxJxHxW.shape == loaded.test_GxQxHxW.shape == (20, 20, 26, 26)
  for run in loaded.runs:
    assert sorted(run.answer_Q.tolist()) == list(range(20)), run.name  # a permutation
    assert run.item_names_Q == tuple(f"item{i:02d}.png" for i in range(1, 21))
  assert set(np.unique(loaded.train_GxJxHxW)) == {0, 1}
  assert loaded.sha256 == "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325"
  # The answers are class_labels.txt's, read here independently.
  with zipfile.ZipFile(runs_zip) as z:
    lines = z.read("run07/class_labels.txt").decode().split()
    png = z.read("run07/training/class03.png")
  answers = dict(zip(lines[0::2], lines[1::2]))
  run = loaded.runs[6]
  for q, item in enumerate(run.item_names_Q):
    assert answers[f"run07/test/{item}"] == f"run07/training/{run.class_names_J[run.answer_Q[q]]}"
  # Preprocessed as the training data: ink is the zeros of the 1-bit PNG, then nearest.
  with Image.open(io.BytesIO(png)) as image:
    assert image.mode == "1" and image.size == (105, 105)
    expected = data.ink_from_decoded(np.asarray(image, np.uint8)[None])
  np.testing.assert_array_equal(run.train_JxHxW[2], data.resize_nearest(expected, 26)[0])


def test_the_105x105_images_are_kept_as_distributed(loaded, runs_zip):
  """Each run also keeps its images as the zip holds them (ink = the 1-bit PNG's zeros, not
  resized); the model's images are their nearest-neighbour resize."""
  assert loaded.has_source
  assert loaded.source_train_GxJxHxW.shape == (20, 20, 105, 105)
  assert loaded.source_test_GxQxHxW.shape == (20, 20, 105, 105)
  run = loaded.runs[11]
  with zipfile.ZipFile(runs_zip) as z:
    for q in (0, 13):
      with Image.open(io.BytesIO(z.read(f"run12/test/{run.item_names_Q[q]}"))) as image:
        ink = (np.asarray(image.convert("L")) == 0).astype(np.uint8)
      np.testing.assert_array_equal(run.source_test_QxHxW[q], ink)
  np.testing.assert_array_equal(data.resize_nearest(loaded.source_train_GxJxHxW[4], 26),
                                loaded.train_GxJxHxW[4])
  # At the source's size nothing is resized.
  original = one_shot.load_runs(runs_zip, image_size=105)
  np.testing.assert_array_equal(original.test_GxQxHxW, loaded.source_test_GxQxHxW)


def test_a_folder_and_the_folder_of_the_zip_read_the_same(loaded, extracted, monkeypatch):
  from_folder = one_shot.load_runs(extracted)
  np.testing.assert_array_equal(from_folder.test_GxQxHxW, loaded.test_GxQxHxW)
  np.testing.assert_array_equal(from_folder.answer_GxQ, loaded.answer_GxQ)
  np.testing.assert_array_equal(from_folder.source_train_GxJxHxW, loaded.source_train_GxJxHxW)
  assert from_folder.sha256 == ""
  monkeypatch.setenv(one_shot.RUNS_ENV, RUNS_DIR)  # the folder holding all_runs.zip
  assert one_shot.resolve_source() == RUNS_ZIP


def test_read_ink_png_takes_paths_bytes_and_files(tmp_path):
  ink = np.random.default_rng(0).random((105, 105)) < 0.2
  path = str(tmp_path / "x.png")
  Image.fromarray(np.where(ink, 0, 255).astype(np.uint8)).convert("1").save(path)
  with open(path, "rb") as f:
    raw = f.read()
  expected = data.resize_nearest(ink[None].astype(np.uint8), 26)[0]
  for source in (path, raw, io.BytesIO(raw)):
    np.testing.assert_array_equal(data.read_ink_png(source, "x.png", 26), expected)


def _damage(folder, how):
  run = os.path.join(folder, "run03")
  if how == "no labels":
    os.remove(os.path.join(run, "class_labels.txt"))
  elif how == "bad line":
    with open(os.path.join(run, "class_labels.txt"), "a") as f:
      f.write("run03/test/item01.png\n")
  elif how == "absent image":
    path = os.path.join(run, "class_labels.txt")
    with open(path) as f:
      text = f.read()
    with open(path, "w") as f:
      f.write(text.replace("training/class05.png", "training/class99.png", 1))
  elif how == "missing answer":
    path = os.path.join(run, "class_labels.txt")
    with open(path) as f:
      lines = f.read().splitlines()
    with open(path, "w") as f:
      f.write("\n".join(line for line in lines if "item04.png" not in line) + "\n")
  elif how == "19 images":
    os.remove(os.path.join(run, "test", "item05.png"))
  elif how == "unreadable png":
    with open(os.path.join(run, "training", "class03.png"), "wb") as f:
      f.write(b"not a png")
  elif how == "no run":
    shutil.rmtree(os.path.join(folder, "run20"))


@pytest.mark.parametrize("how, expected", [
    ("no labels", r"run03/class_labels.txt is missing; expected 20 lines"),
    ("bad line", r"run03/class_labels.txt, line 21: cannot parse 'run03/test/item01.png'; "
                 r"expected 'run03/test/itemMM.png run03/training/classKK.png'"),
    ("absent image", r"run03/class_labels.txt, line \d+: run03/training/class99.png is not "
                     r"among the run's training images"),
    ("missing answer", r"run03/class_labels.txt gives no answer for item04.png"),
    ("19 images", r"run03/test holds 19 PNG images; expected 20"),
    ("unreadable png", r"run03/training/class03.png is not a readable image"),
    ("no run", r"run20 is missing; expected the 20 runs"),
])
def test_malformed_runs_name_the_file(extracted, tmp_path, how, expected):
  _damage(extracted, how)
  with pytest.raises(one_shot.OneShotError, match=expected) as folder_error:
    one_shot.load_runs(extracted)
  assert extracted in str(folder_error.value)
  # The same damage in a zip: the message names the zip and its member.
  damaged_zip = str(tmp_path / "damaged" / "all_runs.zip")
  os.makedirs(os.path.dirname(damaged_zip))
  shutil.make_archive(damaged_zip[:-4], "zip", extracted)
  with pytest.raises(one_shot.OneShotError, match=expected) as zip_error:
    one_shot.load_runs(damaged_zip)
  assert f"{damaged_zip}:" in str(zip_error.value)


def test_checksum_and_location_errors(runs_zip, tmp_path, monkeypatch):
  copy = tmp_path / "all_runs.zip"
  shutil.copy(runs_zip, copy)
  (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  all_runs.zip\n")
  with pytest.raises(one_shot.OneShotError, match=r"all_runs.zip has sha256 437c1e.*, but "
                     r".*SHA256SUMS expects 0000"):
    one_shot.load_runs(str(copy))
  (tmp_path / "SHA256SUMS").write_text("nonsense\n")
  with pytest.raises(one_shot.OneShotError, match=r"SHA256SUMS, line 1: cannot parse"):
    one_shot.load_runs(str(copy))
  monkeypatch.delenv(one_shot.RUNS_ENV, raising=False)
  with pytest.raises(one_shot.OneShotError, match=r"no one-shot runs given: .*public "
                     r"brendenlake/omniglot repository"):
    one_shot.load_runs()
  with pytest.raises(one_shot.OneShotError, match=r"nowhere.zip does not exist"):
    one_shot.load_runs(str(tmp_path / "nowhere.zip"))
