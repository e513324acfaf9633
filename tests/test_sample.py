"""The sampling command: memories from the test split or a folder of PNGs, its sheet, and
clear errors for what a user can get wrong."""

import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from helpers import REPO_ROOT, child_env
from vma_jax import checkpoints
from vma_jax import figures
from vma_jax import model as vma_model
from vma_jax import sample


def _write_png(path, ink_HxW, mode="L"):
  """An image with dark ink on white paper, as Omniglot's."""
  pixels = np.where(ink_HxW, 0, 255).astype(np.uint8)
  Image.fromarray(pixels, "L").convert(mode).save(path)


def _letters(folder, count, size=105, seed=0):
  folder.mkdir()
  rng = np.random.default_rng(seed)
  inks = rng.random((count, size, size)) < 0.15
  for i, ink in enumerate(inks):
    _write_png(folder / f"{i:02d}.png", ink, mode="1" if i % 2 else "L")
  return inks


def test_read_images_preprocesses_as_the_training_data(tmp_path):
  inks = _letters(tmp_path / "m", 2)
  small = np.random.default_rng(1).random((26, 26)) < 0.2
  _write_png(tmp_path / "small.png", small)
  images = sample.read_images(
      [str(tmp_path / "m" / "00.png"), str(tmp_path / "m" / "01.png"),
       str(tmp_path / "small.png")], 26)
  assert images.shape == (3, 26, 26) and images.dtype == np.uint8
  from vma_jax import data  # pylint: disable=g-import-not-at-top
  np.testing.assert_array_equal(images[:2], data.resize_nearest(inks.astype(np.uint8), 26))
  np.testing.assert_array_equal(images[2], small)


@pytest.mark.parametrize("make, expected", [
    (lambda p: Image.new("RGB", (105, 105), "white").save(p), r"mode 'RGB'; expected greyscale"),
    (lambda p: Image.new("L", (64, 64), 255).save(p), r"is 64x64; expected .* 105x105 .* 26x26"),
    (lambda p: p.write_bytes(b"not a png"), r"not a readable image"),
])
def test_bad_images_are_clear_errors(tmp_path, make, expected):
  path = tmp_path / "bad.png"
  make(path)
  with pytest.raises(sample.SampleError, match=expected):
    sample.read_images([str(path)], 26)


def test_an_empty_folder_is_a_clear_error(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(sample.SampleError, match="has no .png images"):
    sample.memory_from_folder(str(tmp_path / "empty"), 26)


def test_sheet_shows_the_models_address_posterior(untrained_run, tmp_path):
  """q(a|x,M) under each slot is the model's, computed here independently; the PNG is
  written and well formed."""
  _letters(tmp_path / "letters", 4)
  _write_png(tmp_path / "x.png", np.random.default_rng(3).random((105, 105)) < 0.15)
  path, sheet = sample.sample_workdir(
      untrained_run, memory_dir=str(tmp_path / "letters"), target=str(tmp_path / "x.png"),
      num_generated=3, out=str(tmp_path / "sheet.png"))
  params, _, config = checkpoints.restore_params(untrained_run)
  model = vma_model.make_model(config)
  x_1xHxW = sample.read_images([str(tmp_path / "x.png")], 26)[None, 0].astype(np.float32)
  memory_1xTxHxW = sample.memory_from_folder(str(tmp_path / "letters"), 26)[None].astype(
      np.float32)
  logits_1xS = model.apply(params, x_1xHxW, memory_1xTxHxW,
                           method="encode").address_logits_BxS
  expected_S = np.asarray(jax.nn.softmax(logits_1xS[0]))
  np.testing.assert_allclose(sheet.q_S, expected_S, rtol=1e-6)
  assert sheet.q_S.shape == (4 + config.model.num_dummies,)
  assert sheet.retrieved == int(np.argmax(expected_S))
  assert sheet.posterior_NxHxW.shape == sheet.prior_NxHxW.shape == (3, 26, 26)

  fig = figures.sample_sheet(sheet.memory_TxHxW, sheet.dummies_DxHxW, sheet.q_S, sheet.x_HxW,
                             sheet.posterior_NxHxW, sheet.prior_NxHxW, title="t")
  shown = [float(m) for ax in fig.axes for m in re.findall(r"q=([0-9.]+)", ax.get_title())]
  np.testing.assert_allclose(shown, np.round(expected_S, 2), atol=1e-9)
  framed = [ax for ax in fig.axes if ax.spines["left"].get_linewidth() > 1]
  assert len(framed) == 1 and framed[0].get_title().startswith(
      sheet.slot_name(sheet.retrieved))
  with Image.open(path) as png:
    png.verify()
  with Image.open(path) as png:
    assert png.format == "PNG" and png.size[0] > 400 and png.size[1] > 200

  # Written again: the earlier sheet is kept beside the new one.
  sample.write_sheet(sheet, str(tmp_path / "sheet.png"), title="again")
  assert (tmp_path / "sheet.1.png").exists() and (tmp_path / "sheet.png").exists()


def test_memory_from_a_test_class(untrained_run, omniglot_test):
  path, sheet = sample.sample_workdir(untrained_run, test_class=5, count=3, num_generated=2)
  assert path.endswith("samples/class5_T3.png")
  assert sheet.memory_TxHxW.shape == (3, 26, 26) and sheet.q_S.shape == (5,)
  memory_TxHxW, x_HxW = sample.memory_from_class(omniglot_test, 5, 3)
  np.testing.assert_array_equal(sheet.memory_TxHxW, memory_TxHxW)
  np.testing.assert_array_equal(sheet.x_HxW, x_HxW)
  assert not any((x_HxW == m).all() for m in memory_TxHxW)  # the target is not in memory
  with pytest.raises(sample.SampleError, match="classes are 0 to 658"):
    sample.memory_from_class(omniglot_test, 659, 3)
  with pytest.raises(sample.SampleError, match="holds 1 to 19"):
    sample.memory_from_class(omniglot_test, 0, 20)


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path, untrained_run):
  for args, expected, status in (
      (["--workdir", str(tmp_path / "nothing"), "--test_class=1"], "does not exist", 2),
      (["--workdir", str(tmp_path)], "has no config.json", 2),
      (["--workdir", untrained_run], "give the memory as", 1)):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "sample.py"), *args],
                            cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == status, result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("sample.py: ")


def test_memory_from_several_classes_and_from_a_folder_with_its_target(omniglot_test,
                                                                       tmp_path):
  memory_TxHxW, labels_T, x_HxW = sample.memory_from_classes(omniglot_test, [7, 21, 40], 2)
  assert memory_TxHxW.shape == (6, 26, 26)
  np.testing.assert_array_equal(labels_T, [7, 7, 21, 21, 40, 40])
  images_of = lambda c: omniglot_test.images_NxHxW[omniglot_test.labels_N == c]
  for image, label in zip(memory_TxHxW, labels_T):
    assert any((image == m).all() for m in images_of(label))
  # The target is another image of the first class.
  assert any((x_HxW == m).all() for m in images_of(7))
  assert not any((x_HxW == m).all() for m in memory_TxHxW)
  again = sample.memory_from_classes(omniglot_test, [7, 21, 40], 2)
  np.testing.assert_array_equal(again[0], memory_TxHxW)  # the seed fixes the choice
  with pytest.raises(sample.SampleError, match="each class once"):
    sample.memory_from_classes(omniglot_test, [7, 7], 2)
  # Messages name the values, not a command's flags (the notebook calls this too).
  with pytest.raises(sample.SampleError, match=r"^20 images of test class 7 asked for: it "
                     r"has 20, so the memory holds 1 to 19 of them \(one more is the target\)$"):
    sample.memory_from_classes(omniglot_test, [7, 21], 20)
  with pytest.raises(sample.SampleError, match=r"^there is no test class 700: "):
    sample.memory_from_classes(omniglot_test, [7, 700], 2)

  inks = _letters(tmp_path / "mine", 3)
  memory_TxHxW, x_HxW = sample.memory_and_target_from_folder(str(tmp_path / "mine"), 26)
  assert memory_TxHxW.shape == (2, 26, 26) and x_HxW.shape == (26, 26)
  np.testing.assert_array_equal(x_HxW, sample.read_images([str(tmp_path / "mine" / "02.png")],
                                                          26)[0])
  assert inks.shape[0] == 3
  _letters(tmp_path / "one", 1)
  with pytest.raises(sample.SampleError, match="at least two"):
    sample.memory_and_target_from_folder(str(tmp_path / "one"), 26)
