"""Figures: well-formed PNGs of the expected size, labelled as the paper's and ours."""

import io
import subprocess
import sys

import numpy as np
from PIL import Image

from helpers import REPO_ROOT, child_env
from vma_jax import figures
from vma_jax import results as vma_results


def _results():
  make = lambda c, t, bound, kl: vma_results.CellResult(
      max_classes=c, memory_size=t, bound=bound, stderr=0.5, num_importance=1000,
      num_targets=100, seconds=1.0, address_kl=kl, address_entropy=np.log(t + 2) - kl,
      mass_target_class=0.6, mass_dummy=0.1)
  return [make(1, 1, 90.0, 0.3), make(1, 5, 85.0, 1.0), make(1, 19, 80.0, 1.8),
          make(2, 2, 91.0, 0.5), make(2, 10, 86.0, 1.2)]


def _texts(fig):
  texts = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
  return texts + [ax.get_xlabel() for ax in fig.axes] + [ax.get_ylabel() for ax in fig.axes]


def test_bound_vs_memory_draws_ours_beside_the_published_numbers(tmp_path):
  fig = figures.bound_vs_memory(_results())
  texts = _texts(fig)
  for label in ("this run, C=1", "this run, C=2", "paper (Bornschein et al. 2017), C=1",
                "PyTorch reproduction, C=2"):
    assert label in texts, texts
  assert "T, images in memory" in texts
  ax = fig.axes[0]
  paper_c1 = next(l for l in ax.get_lines() if l.get_label().startswith("paper") and
                  l.get_label().endswith("C=1"))
  np.testing.assert_array_equal(paper_c1.get_ydata(), [86.5, 83.0, 79.6, 79.0, 76.5, 76.2, 73.9])
  path = tmp_path / "bound_vs_T.png"
  figures.write_png(fig, str(path))
  with Image.open(path) as png:
    png.verify()
  with Image.open(path) as png:
    assert png.format == "PNG" and png.size == (640, 440)


def test_kl_vs_memory_draws_the_kl_of_a_certain_posterior():
  fig = figures.kl_vs_memory(_results(), num_dummies=2)
  ceiling = next(l for l in fig.axes[0].get_lines() if l.get_label().startswith("log(T + D)"))
  np.testing.assert_allclose(ceiling.get_ydata(), np.log(ceiling.get_xdata() + 2))
  ours = next(l for l in fig.axes[0].get_lines() if l.get_label() == "this run, C=1")
  np.testing.assert_array_equal(ours.get_xdata(), [1, 5, 19])
  np.testing.assert_array_equal(ours.get_ydata(), [0.3, 1.0, 1.8])
  image = figures.to_rgb(fig)
  assert image.dtype == np.uint8 and image.shape == (440, 640, 3)


def test_large_memory_cells_are_their_own_lines_and_empty_memories_horizontal():
  """Cells R/T: one line per R, no published numbers beside them; T = 0: a horizontal line."""
  make = lambda t, r, bound, kl, c=0: vma_results.CellResult(
      max_classes=c, memory_size=t, same_class=r, bound=bound, stderr=0.5,
      num_importance=100, num_targets=10, seconds=1.0, address_kl=kl)
  results = ([make(t, 5, 90.0 - t / 100, 1.0 + t / 1000) for t in (19, 100, 1000)]
             + [make(t, 1, 95.0, 0.5) for t in (19, 1000)] + [make(0, 0, 120.0, 0.0, c=1)])
  bound_fig, kl_fig = figures.bound_vs_memory(results), figures.kl_vs_memory(results, 2)
  texts = _texts(bound_fig)
  assert "this run, R=5 of x's class among T" in texts
  assert "this run, R=1 of x's class among T" in texts
  assert not any(t.startswith("paper") for t in texts)  # Table 1 has no R/T cells
  for fig, value in ((bound_fig, 120.0), (kl_fig, 0.0)):
    lines = {l.get_label(): l for l in fig.axes[0].get_lines()}
    empty = lines["this run, T=0 (dummies only), C=1"]
    np.testing.assert_array_equal(empty.get_ydata(), [value, value])
  r5 = next(l for l in kl_fig.axes[0].get_lines() if l.get_label().startswith("this run, R=5"))
  np.testing.assert_array_equal(r5.get_xdata(), [19, 100, 1000])
  np.testing.assert_allclose(r5.get_ydata(), [1.019, 1.1, 2.0])


def test_few_shot_grid_labels_its_columns(tmp_path):
  rng = np.random.default_rng(0)
  fig = figures.few_shot_grid(rng.random((3, 4, 26, 26)), rng.random((3, 26, 26)),
                              rng.random((3, 26, 26)), rng.random((3, 5, 26, 26)))
  assert len(fig.axes) == 3 * (4 + 2 + 5)
  assert [t.get_text() for t in fig.texts] == ["memory", "target", "retrieved", "samples"]
  path = tmp_path / "grid.png"
  figures.write_png(fig, str(path))
  with Image.open(path) as png:
    assert png.format == "PNG" and png.size[0] > png.size[1] > 0


def test_training_curves_keep_the_last_record_of_a_step():
  records = [{"step": 10, "train/neg_bound": 300.0, "train/address_kl": 0.1},
             {"step": 20, "train/neg_bound": 250.0, "train/address_kl": 0.2},
             {"step": 20, "train/neg_bound": 240.0, "train/address_kl": 0.3},  # resumed
             {"step": 20, "valid/neg_bound": 260.0, "valid/address_kl": 0.25}]
  fig = figures.training_curves(records)
  bound_ax, kl_ax = fig.axes
  (train, valid) = bound_ax.get_lines()
  assert (train.get_label(), valid.get_label()) == ("training batches", "validation")
  np.testing.assert_array_equal(train.get_xdata(), [10, 20])
  np.testing.assert_array_equal(train.get_ydata(), [300.0, 240.0])
  np.testing.assert_array_equal(valid.get_ydata(), [260.0])
  np.testing.assert_array_equal(kl_ax.get_lines()[0].get_ydata(), [0.1, 0.3])
  assert bound_ax.get_xlabel() == "step" and "-L_K" in bound_ax.get_ylabel()
  assert Image.open(io.BytesIO(figures.png_bytes(fig))).format == "PNG"


def test_address_posterior_bars_sum_to_one_and_frame_the_retrieved_slot():
  rng = np.random.default_rng(0)
  q_S = np.array([0.1, 0.5, 0.05, 0.05, 0.2, 0.1])
  fig = figures.address_posterior(rng.random((4, 26, 26)), rng.random((2, 26, 26)),
                                  rng.random((26, 26)), q_S,
                                  same_class_T=np.array([True, True, False, False]))
  bar_ax = next(ax for ax in fig.axes if ax.patches)
  heights = [p.get_height() for p in bar_ax.patches]
  np.testing.assert_allclose(heights, q_S)
  colours = [p.get_facecolor() for p in bar_ax.patches]
  assert colours[0] == colours[1] != colours[2] == colours[3] != colours[4] == colours[5]
  assert [t.get_text() for t in bar_ax.get_legend().get_texts()] == [
      "x's class", "other classes", "dummy slots"]
  titles = [ax.get_title() for ax in fig.axes if not ax.patches]
  assert titles == ["target x", "m1", "m2", "m3", "m4", "d1", "d2"]
  framed = [ax.get_title() for ax in fig.axes
            if not ax.patches and ax.spines["top"].get_linewidth() > 1]
  assert framed == ["m2"]  # argmax q


def test_the_commands_import_matplotlib_only_to_draw():
  """matplotlib is imported with the first figure: its import (a third of a second) is not
  part of every command's start, a usage error's or a run's without image summaries."""
  code = ("import sys\n"
          "from vma_jax import classify, evaluate, run, sample, train, validation\n"
          "print('matplotlib' in sys.modules)\n"
          "from vma_jax import figures\n"
          "figures.to_rgb(figures.training_curves([{'step': 1, 'train/neg_bound': 1.0}]))\n"
          "print('matplotlib' in sys.modules)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["False", "True"]
