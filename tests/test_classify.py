"""One-shot classification: the classifiers on runs whose test images are their training
images, with a small model trained here on the real data; results files that agree with
their predictions and keep earlier ones; a command whose errors are one line."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from helpers import REPO_ROOT, child_env, small_config
from vma_jax import checkpoints
from vma_jax import classify
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
  """A workdir of the small model trained for TRAIN_STEPS steps on the real splits."""
  from vma_jax import train  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  config = small_config(train__num_steps=TRAIN_STEPS, train__batch_size=16,
                        train__checkpoint_every=TRAIN_STEPS, train__log_every=TRAIN_STEPS,
                        train__tensorboard=False)
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


def test_bound_and_pixel_recognise_a_test_image_that_is_a_training_image(trained_run, runs):
  params, _, config = checkpoints.restore_params(trained_run)
  identical = _identical(runs, num_runs=2)
  scores = classify.class_scores(identical, ["bound", "pixel"],
                                 model=vma_model.make_model(config), params=params,
                                 num_importance=4, chunk_size=4, batch_size=20, seed=0)
  for result in classify.predictions(identical, scores):
    assert result.errors == 0, (result.name, result.predicted_GxQ, result.answer_GxQ)
  # The pixel classifier's distance to the identical image is zero.
  assert np.all(scores["pixel"].max(axis=-1) == 0)
  # Deterministic: the same seed gives the same bounds, whatever the batch size.
  again = classify.class_scores(identical, ["bound"], model=vma_model.make_model(config),
                                params=params, num_importance=4, chunk_size=2, batch_size=8,
                                seed=0)
  np.testing.assert_allclose(again["bound"], scores["bound"], rtol=1e-5)


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
])
def test_command_line_errors_are_one_line(args, env, expected, tmp_path):
  command = ([sys.executable, "-m", "vma_jax.classify"] if "no checkpoint" in expected
             else [sys.executable, str(REPO_ROOT / "classify.py")])
  result = subprocess.run([*command, *args], cwd=REPO_ROOT, env=child_env(**env),
                          capture_output=True, text=True, timeout=300)
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
