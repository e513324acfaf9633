"""One-shot classification: the classifiers on runs whose test images are their training
images, with a small model trained here on the real data; results files that agree with
their predictions and keep earlier ones; a command whose errors are one line."""

import dataclasses
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from scipy import spatial

from helpers import REPO_ROOT, child_env, small_config
from vma_jax import checkpoints
from vma_jax import classify
from vma_jax import data
from vma_jax import model as vma_model
from vma_jax import one_shot

RUNS_ZIP = os.path.join(os.environ.get("VMA_ONE_SHOT_DIR") or str(
    REPO_ROOT.parent / "shared" / "data" / "omniglot_one_shot"), one_shot.RUNS_FILE)
TRAIN_STEPS = 100


@pytest.fixture(scope="module")
def runs() -> one_shot.OneShotRuns:
  if not os.path.isfile(RUNS_ZIP):
    pytest.skip(f"{RUNS_ZIP} not found")
  return one_shot.load_runs(RUNS_ZIP)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, omniglot_train, omniglot_test) -> str:
  """A workdir of the small model trained for TRAIN_STEPS steps on the real splits:
  30-50 s on 2 cores, the steps most of it. Fewer steps (30 or 60) leave a model whose bound
  does not yet pick out a test image that is one of its run's training images."""
  from vma_jax import train  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  config = small_config(train__num_steps=TRAIN_STEPS, train__batch_size=16,
                        train__checkpoint_every=TRAIN_STEPS, train__log_every=TRAIN_STEPS)
  train.train_and_evaluate(config, workdir,
                           splits={"train": omniglot_train, "test": omniglot_test})
  return workdir


def _identical(runs, num_runs, seed=0) -> one_shot.OneShotRuns:
  """The first num_runs runs with their test images replaced by their own training images,
  shuffled: test image q is training image answer_Q[q]."""
  rng = np.random.default_rng(seed)
  changed = []
  for run in runs.runs[:num_runs]:
    answer_Q = rng.permutation(len(run.class_names_J)).astype(np.int32)
    changed.append(one_shot.OneShotRun(run.name, run.class_names_J, run.item_names_Q,
                                       run.train_JxHxW, run.train_JxHxW[answer_Q], answer_Q))
  return one_shot.OneShotRuns(tuple(changed), source=runs.source)


def test_wilson_interval():
  low, high = classify.wilson_interval(0, 400)
  assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(1.959964**2 / (400 + 1.959964**2))
  low, high = classify.wilson_interval(50, 100)
  assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)
  low, high = classify.wilson_interval(155, 400)  # 38.8%
  assert low < 0.388 < high and high - low == pytest.approx(0.0948, abs=1e-3)


def _mhd_by_cdist(a_Px2, b_Fx2) -> float:
  """The modified Hausdorff distance from all pairwise distances, with scipy's cdist."""
  dist_PxF = spatial.distance.cdist(a_Px2, b_Fx2)
  return max(np.mean(dist_PxF.min(axis=1)), np.mean(dist_PxF.min(axis=0)))


def _centred_as_the_demo(ink_HxW) -> np.ndarray:
  """Lake et al.'s demo's points: (row, col) of the ink as a transposed 2 x P array, minus
  its mean over axis 0."""
  points_Px2 = np.transpose(np.array(np.nonzero(ink_HxW))).astype(float)
  return points_Px2 - np.mean(points_Px2, axis=0)


def _masks(seed=0) -> np.ndarray:
  """105 x 105 ink masks: random strokes and blobs, one pixel, the corners, a full row."""
  rng = np.random.default_rng(seed)
  masks = []
  for density in (0.01, 0.05, 0.3):
    mask = np.zeros((105, 105), np.uint8)
    top, left = rng.integers(0, 60, size=2)
    mask[top:top + 45, left:left + 45] = rng.random((45, 45)) < density
    masks.append(mask)
  stroke = np.zeros((105, 105), np.uint8)
  rows = np.arange(10, 90)
  stroke[rows, (30 + 20 * np.sin(rows / 9)).astype(int)] = 1
  stroke[50:53, 5:100] = 1
  masks.append(stroke)
  one = np.zeros((105, 105), np.uint8)
  one[52, 7] = 1
  corners = np.zeros((105, 105), np.uint8)
  corners[[0, 0, 104], [0, 104, 104]] = 1
  row = np.zeros((105, 105), np.uint8)
  row[104] = 1
  return np.stack(masks + [one, corners, row])


def test_modified_hausdorff_of_point_sets():
  """max(mean_a min_b |a - b|, mean_b min_a |a - b|), by hand and against scipy's cdist."""
  a_Px2 = np.array([[0.0, 0.0], [1.0, 0.0]])
  b_Fx2 = np.array([[0.0, 3.0]])
  # From a: 3 and sqrt(10); from b: 3. The larger mean is a's.
  assert classify.modified_hausdorff(a_Px2, b_Fx2) == pytest.approx((3 + np.sqrt(10)) / 2)
  assert classify.modified_hausdorff(b_Fx2, a_Px2) == pytest.approx((3 + np.sqrt(10)) / 2)
  assert classify.modified_hausdorff(a_Px2, a_Px2) == 0.0
  # Unlike the Hausdorff distance (a max of minima), one far point moves it by its share.
  c_Fx2 = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [10.0, 0.0]])
  assert classify.modified_hausdorff(a_Px2, c_Fx2) == pytest.approx((0 + 0 + 1 + 9) / 4)
  rng = np.random.default_rng(0)
  for p, f in ((1, 1), (3, 7), (40, 25)):
    a_Px2, b_Fx2 = rng.normal(size=(p, 2)) * 5, rng.normal(size=(f, 2)) * 5 + 2
    assert classify.modified_hausdorff(a_Px2, b_Fx2) == pytest.approx(
        _mhd_by_cdist(a_Px2, b_Fx2), rel=1e-12)


def test_ink_points_are_the_inked_pixels_centred_on_their_mean():
  ink_HxW = np.zeros((105, 105), np.uint8)
  ink_HxW[[10, 10, 14], [20, 21, 20]] = 1
  expected_Px2 = np.array([[10, 20], [10, 21], [14, 20]]) - np.array([34 / 3, 61 / 3])
  np.testing.assert_allclose(classify.ink_points(ink_HxW), expected_Px2, atol=1e-12)
  for mask in _masks():
    points_Px2 = classify.ink_points(mask)
    np.testing.assert_array_equal(points_Px2, _centred_as_the_demo(mask))
    np.testing.assert_allclose(points_Px2.mean(axis=0), 0.0, atol=1e-12)
  # Centred, the distance does not see where on the page the character is.
  shifted = np.zeros_like(ink_HxW)
  shifted[[70, 70, 74], [3, 4, 3]] = 1
  assert classify.hausdorff_costs(shifted[None], ink_HxW[None])[0, 0] == pytest.approx(
      0.0, abs=1e-12)
  with pytest.raises(classify.ClassifyError, match="an image without ink"):
    classify.ink_points(np.zeros((105, 105), np.uint8))


def test_hausdorff_costs_are_the_pairwise_definition_bit_for_bit():
  """On 105 x 105 masks (sparse, dense, strokes, one pixel, corners, an edge row) the fast
  costs are exactly those of all pairwise distances (scipy's cdist) of the centred pixels."""
  masks = np.concatenate([_masks(0), _masks(1)[:4]])
  costs = classify.hausdorff_costs(masks, masks[::-1])
  expected = np.array([[_mhd_by_cdist(_centred_as_the_demo(x), _centred_as_the_demo(m))
                        for m in masks[::-1]] for x in masks])
  np.testing.assert_array_equal(costs, expected)
  assert np.all(np.diag(costs[:, ::-1]) == 0.0)


def _run(name, train_JxHxW, test_QxHxW, answer_Q, image_size=26) -> one_shot.OneShotRun:
  """A run of 105 x 105 masks, also resized as load_runs does."""
  return one_shot.OneShotRun(
      name, tuple(f"class{j + 1:02d}.png" for j in range(len(train_JxHxW))),
      tuple(f"item{q + 1:02d}.png" for q in range(len(test_QxHxW))),
      data.resize_nearest(train_JxHxW, image_size), data.resize_nearest(test_QxHxW, image_size),
      np.asarray(answer_Q, np.int32), source_train_JxHxW=train_JxHxW,
      source_test_QxHxW=test_QxHxW)


def test_hausdorff_classifier_picks_the_nearest_shape_and_the_first_of_a_tie():
  """Training images: a vertical bar, a horizontal bar, a ring, and the horizontal bar again;
  test images: the same shapes elsewhere on the page, changed a little."""
  blank = np.zeros((105, 105), np.uint8)
  vertical, horizontal, ring = blank.copy(), blank.copy(), blank.copy()
  vertical[20:80, 50:53] = 1
  horizontal[50:53, 20:80] = 1
  grid_r, grid_c = np.mgrid[:105, :105]
  ring[np.abs(np.hypot(grid_r - 52, grid_c - 52) - 25) < 1.5] = 1
  train_JxHxW = np.stack([vertical, horizontal, ring, horizontal])
  test_horizontal, test_vertical = blank.copy(), blank.copy()
  test_ring = np.roll(ring, (9, -12), axis=(0, 1))
  test_horizontal[80:83, 10:75] = 1
  test_ring[40:50, :] = 0  # a gap
  test_vertical[5:90, 90:92] = 1
  run = _run("run01", train_JxHxW, np.stack([test_horizontal, test_ring, test_vertical]),
             [1, 2, 0])
  runs = one_shot.OneShotRuns((run,), source="synthetic")
  scores = classify.class_scores(runs, ["hausdorff"])  # no model needed
  np.testing.assert_array_equal(
      scores["hausdorff"], -classify.hausdorff_costs(run.source_test_QxHxW, train_JxHxW))
  # The two horizontal bars tie exactly: the first is the answer, as the demo's argmin.
  assert scores["hausdorff"][0, 1] == scores["hausdorff"][0, 3]
  (result,) = classify.predictions(runs, scores)
  np.testing.assert_array_equal(result.predicted_GxQ, [[1, 2, 0]])
  # Runs without their 105 x 105 images cannot be classified so.
  bare = one_shot.OneShotRuns((dataclasses.replace(run, source_test_QxHxW=None),), "bare")
  with pytest.raises(classify.ClassifyError, match="needs the runs' 105 x 105 images"):
    classify.class_scores(bare, ["pixel", "hausdorff"])


@pytest.mark.slow
def test_hausdorff_makes_lake_et_al_s_published_error(runs):
  """On the 400 trials, the modified Hausdorff distance of the 105 x 105 images errs on
  38.8%, Lake et al.'s published figure, and its row is in every results file."""
  scores = classify.class_scores(runs, ["hausdorff"])
  (result,) = classify.predictions(runs, scores)
  assert result.errors == 155 and f"{100 * result.error_rate:.1f}" == "38.8"
  assert dict(one_shot.PUBLISHED)["modified Hausdorff distance on pixels"] == 38.8
  # A few trials against scipy's cdist on the points as the demo makes them.
  run = runs.runs[4]
  for q in (0, 7, 19):
    x_Px2 = _centred_as_the_demo(run.source_test_QxHxW[q])
    cost_J = [_mhd_by_cdist(x_Px2, _centred_as_the_demo(m)) for m in run.source_train_JxHxW]
    np.testing.assert_array_equal(-scores["hausdorff"][4 * 20 + q], cost_J)
  saved = classify.results_json(runs, [result], {})["classifiers"]["hausdorff"]
  assert saved["errors"] == 155 and len(saved["predictions"]) == 400
  assert "hausdorff,all,155,400,0.3875," in classify.results_csv(runs, [result])
  assert ("| hausdorff (no model: modified Hausdorff distance, 105 x 105) | 38.8 | 34.1 – 43.6 "
          "| 155 / 400 |") in classify.results_markdown([result], {})


def test_a_plain_vae_classifies_with_the_model_free_classifiers(runs, monkeypatch, tmp_path):
  """A plain VAE reads no memory: pixel and hausdorff apply, the model's classifiers not."""
  config = small_config()
  config.model.memory_read = "none"
  monkeypatch.setattr(classify.checkpoints, "restore_params",
                      lambda workdir, step=None: ({"w": np.zeros(2, np.float32)}, 5, config))
  two_runs = one_shot.OneShotRuns(runs.runs[:2], source=runs.source, sha256=runs.sha256)
  monkeypatch.setattr(classify.one_shot, "load_runs", lambda source, image_size: two_runs)
  workdir = str(tmp_path / "vae")
  with pytest.raises(classify.ClassifyError, match=r"\(PlainVAE\) reads no memory: only "
                     r"--classifiers=pixel,hausdorff apply"):
    classify.classify_workdir(workdir, runs=RUNS_ZIP, classifiers="pixel,address")
  results, paths = classify.classify_workdir(workdir, runs=RUNS_ZIP,
                                             classifiers="hausdorff,pixel")
  assert [r.name for r in results] == ["pixel", "hausdorff"]
  assert set(paths) == {"results.json", "results.csv", "results.md"}
  costs_GxQxJ = np.stack([classify.hausdorff_costs(r.source_test_QxHxW, r.source_train_JxHxW)
                          for r in two_runs.runs])
  np.testing.assert_array_equal(results[1].predicted_GxQ, costs_GxQxJ.argmin(axis=-1))
  with open(paths["results.json"]) as f:
    saved = json.load(f)
  assert list(saved["classifiers"]) == ["pixel", "hausdorff"]
  assert saved["meta"]["num_runs"] == 2
  # The first of the runs alone: its 20 trials, classified as among all of them.
  results_1, paths_1 = classify.classify_workdir(workdir, runs=RUNS_ZIP, num_runs=1,
                                                 classifiers="hausdorff,pixel",
                                                 out=str(tmp_path / "one_run"))
  assert [r.trials for r in results_1] == [20, 20]
  for r, r_1 in zip(results, results_1):
    np.testing.assert_array_equal(r_1.predicted_GxQ, r.predicted_GxQ[:1])
  with open(paths_1["results.md"]) as f:
    assert "the first 1 of Lake et al.'s 20 runs (20 trials)" in f.read()
  for num_runs in (0, 21):
    with pytest.raises(classify.ClassifyError, match=f"--num_runs={num_runs}: choose 1 to 20"):
      classify.classify_workdir(workdir, runs=RUNS_ZIP, num_runs=num_runs,
                                classifiers="pixel")
  # Both are in the default set (--classifiers' default is CLASSIFIERS).
  assert set(classify.MODEL_FREE) == {"pixel", "hausdorff"} <= set(classify.CLASSIFIERS)


@pytest.mark.slow
def test_bound_and_pixel_recognise_a_test_image_that_is_a_training_image(trained_run, runs):
  """About a minute with `trained_run` (trained once for the three tests that read it): the
  bound needs a model trained long enough to tell a run's images apart."""
  params, _, config = checkpoints.restore_params(trained_run)
  identical = _identical(runs, num_runs=2)
  scores = classify.class_scores(identical, ["bound", "pixel"],
                                 model=vma_model.make_model(config), params=params,
                                 num_importance=4, chunk_size=4, batch_size=20, seed=0)
  results = {r.name: r for r in classify.predictions(identical, scores)}
  bound, pixel = results["bound"], results["pixel"]
  assert pixel.errors == 0, (pixel.predicted_GxQ, pixel.answer_GxQ)
  # A 100-step model's bound: 0-2 errors of 40 as float rounding changes its training (chance
  # is 38 of 40); a bound that ignores the memory, or reads another slot, misses most.
  assert bound.errors <= 0.1 * bound.answer_GxQ.size, (bound.predicted_GxQ, bound.answer_GxQ)
  # The pixel classifier's distance to the identical image is zero.
  assert np.all(scores["pixel"].max(axis=-1) == 0)
  # Deterministic: the same seed gives the same bounds, whatever the batch size (trial n's
  # samples come from the seed and n: the first run's 20 trials are those above).
  again = classify.class_scores(_identical(runs, num_runs=1), ["bound"],
                                model=vma_model.make_model(config), params=params,
                                num_importance=4, chunk_size=2, batch_size=8, seed=0)
  np.testing.assert_allclose(again["bound"], scores["bound"][:len(again["bound"])], rtol=1e-5)


@pytest.mark.slow
def test_address_picks_the_largest_inner_product_which_need_not_be_the_image_itself(
    trained_run, runs):
  """On runs whose test images are their training images, the address classifier's answer
  is argmax_c <h(x), h(m_c)> computed here image by image; it misses x's own image exactly
  where another training image scores more than |h(x)|^2 (q(a|x,M) is a softmax of inner
  products, not of a similarity that is largest at m_c = x)."""
  params, _, config = checkpoints.restore_params(trained_run)
  model = vma_model.make_model(config)
  identical = _identical(runs, num_runs=2)
  scores = classify.class_scores(identical, ["address"], model=model, params=params,
                                 batch_size=20)
  (result,) = classify.predictions(identical, scores)
  for run, predicted_Q in zip(identical.runs, result.predicted_GxQ):
    h_JxA = np.asarray(model.apply(params, run.train_JxHxW.astype(np.float32),
                                   method=lambda vma, images: vma.match(images)[0]))
    h_x_QxA = h_JxA[run.answer_Q]
    score_QxJ = h_x_QxA @ h_JxA.T
    np.testing.assert_array_equal(predicted_Q, np.argmax(score_QxJ, axis=1))
    own_Q = np.sum(h_x_QxA ** 2, axis=1)
    hub_Q = np.max(score_QxJ, axis=1) > own_Q * (1 + 1e-5)
    np.testing.assert_array_equal(predicted_Q != run.answer_Q, hub_Q)


@pytest.mark.slow
def test_results_files_agree_with_their_predictions(trained_run, runs, tmp_path):
  out = str(tmp_path / "out")
  results, paths = classify.classify_workdir(trained_run, runs=RUNS_ZIP,
                                             classifiers="pixel,address", batch_size=40,
                                             out=out)
  assert [r.name for r in results] == ["address", "pixel"]
  assert set(os.listdir(out)) == set(classify.RESULT_FILES)
  with open(paths["results.json"]) as f:
    saved = json.load(f)
  meta = saved["meta"]
  assert meta["params_sha256"] and meta["step"] == TRAIN_STEPS and meta["runs_sha256"]
  # The answers, read here from the zip's class_labels.txt, not from the loader.
  answers = {}
  with zipfile.ZipFile(RUNS_ZIP) as z:
    for r in range(1, 21):
      words = z.read(f"run{r:02d}/class_labels.txt").decode().split()
      answers.update(zip(words[0::2], words[1::2]))
  for result in results:
    stored = saved["classifiers"][result.name]
    assert len(stored["predictions"]) == 400
    wrong = [p for p in stored["predictions"]
             if f"{p['run']}/training/{p['predicted']}" != answers[f"{p['run']}/test/{p['item']}"]]
    assert stored["errors"] == len(wrong) == result.errors
    assert sum(stored["errors_per_run"].values()) == len(wrong)
    assert stored["error_rate"] == len(wrong) / 400
    assert stored["wilson_95"][0] <= stored["error_rate"] <= stored["wilson_95"][1]
    assert all(p["correct"] == (p not in wrong) for p in stored["predictions"])
  with open(paths["results.csv"]) as f:
    rows = f.read().splitlines()
  assert len(rows) == 1 + 2 * 21 and rows[21].startswith(f"address,all,{results[0].errors},400")
  with open(paths["results.md"]) as f:
    md = f.read()
  assert "| people (Lake et al. 2015, published) | 4.5 |" in md
  assert "| Bayesian Program Learning (Lake et al. 2015, published) | 3.3 |" in md
  assert f"| {100 * results[0].error_rate:.1f} |" in md

  # Written again: the earlier files are kept, the new ones are the latest.
  with open(paths["results.json"]) as f:
    first = f.read()
  classify.write_results(runs, results[1:], out, meta)
  assert {"results.1.json", "results.1.csv", "results.1.md", "wrong.1.png"} <= set(
      os.listdir(out))
  with open(os.path.join(out, "results.1.json")) as f:
    assert f.read() == first
  with open(paths["results.json"]) as f:
    assert list(json.load(f)["classifiers"]) == ["pixel"]


def test_wrong_figure_says_how_many_are_not_shown(runs):
  wrong_GxQ = (runs.answer_GxQ + 1) % 20  # every trial wrong
  results = [classify.ClassifierResult("bound", wrong_GxQ, runs.answer_GxQ)]
  fig = classify.wrong_figure(runs, results, "t", max_drawn=6)
  texts = [t.get_text() for ax in fig.axes for t in ax.texts]
  assert any("bound: 400 of 400 wrong; 6 shown, 394 not shown" in t for t in texts)
  titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
  assert titles[:3] == ["run01 item01", f"said {runs.runs[0].class_names_J[wrong_GxQ[0, 0]][:-4]}",
                        f"is {runs.runs[0].class_names_J[runs.answer_GxQ[0, 0]][:-4]}"]


@pytest.mark.parametrize("args, env, expected", [
    (["--workdir=/nonexistent", "--runs=/nowhere/all_runs.zip"], {}, "does not exist"),
    (["--classifiers=address,nearest"], {}, "expected a comma-separated list of address"),
    (["--workdir=/nonexistent"], {"VMA_ONE_SHOT_RUNS": RUNS_ZIP}, "not a training run"),
    (["--num_runs=21"], {"VMA_ONE_SHOT_RUNS": RUNS_ZIP}, "--num_runs=21: choose 1 to 20"),
])
def test_command_line_errors_are_one_line(args, env, expected, tmp_path):
  result = subprocess.run([sys.executable, str(REPO_ROOT / "classify.py"), *args],
                          cwd=REPO_ROOT, env=child_env(**env), capture_output=True, text=True,
                          timeout=300)
  assert result.returncode != 0
  assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("classify.py: ")


def test_without_runs_the_command_says_where_they_come_from():
  env = child_env()
  env.pop("VMA_ONE_SHOT_RUNS", None)
  result = subprocess.run([sys.executable, str(REPO_ROOT / "classify.py")], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert "brendenlake/omniglot" in last and "one-shot-classification/all_runs.zip" in last
