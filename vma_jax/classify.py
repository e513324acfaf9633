"""20-way one-shot classification on Lake et al.'s Omniglot runs with a trained model
(the command: classify.py at the repository root).

Each of the G = 20 runs (`vma_jax.one_shot`) has J = 20 training images, one per class, and
Q = 20 test images: 400 trials in all. For a test image x of a run with training images
m_1 .. m_J the classifiers predict:

  address   argmax_c q(a = c | x, M) with M = (m_1 .. m_J) the memory (T = J, plus the read's
            learned slots, which are left out of the argmax): the slot the model would read.
            For a model whose read has an address (`Read.address`).
  bound     argmax_c L_K(x | m_c), the K-sample bound with the one-image memory (m_c) (T = 1;
            `objective.streaming_bound`): the class whose image explains x best. With a
            uniform prior over classes, softmax_c L_K is an approximate posterior over the
            class.
  combined  argmax_c [log_softmax_c <h(x), h(m_c)> + log_softmax_c L_K(x | m_c)]: a heuristic
            that adds the two log-scores as if they were independent evidence; it is not the
            posterior of either model.
  pixel     argmin_c of the Hamming distance between x and m_c on the same preprocessed
            images: no model, the floor a model should beat.
  hausdorff argmin_c of the modified Hausdorff distance between x and m_c as distributed
            (105 x 105), Lake et al.'s own baseline as their demo computes it: each image's
            inked pixels centred on their mean, MHD(A, B) = max(mean_a min_b |a - b|,
            mean_b min_a |a - b|). No model; the first class of a tie, as theirs.

A model whose read ignores the memory (`Read.reads_memory` False: the plain VAE) allows only
the model-free classifiers. Sample k of the bound of (x, m_c) is drawn from
fold_in(fold_in(fold_in(key(seed), n), c), k) with n the trial's index (run-major), so
results do not depend on the batch or chunk sizes. Results go to workdir/classify/ (or
`out`): results.json, results.csv, results.md and wrong.png, the trials the address and bound
classifiers get wrong; earlier files there are kept as results.<n>.* and wrong.<n>.png.

Shape letters: docs/model.md's (G runs, J classes of a run, Q test images of a run); here
N = G * Q trials and B trials in a batch, and P and F the inked pixels of two images.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import time
from collections.abc import Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vma_jax import batches
from vma_jax import checkpoints
from vma_jax import figures
from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax import one_shot
from vma_jax import results as vma_results

CLASSIFIERS = ("address", "bound", "combined", "pixel", "hausdorff")
# The classifiers that use the model's score of each class (the rest come from them or none).
_MODEL_SCORES = {"address": ("address",), "bound": ("bound",),
                 "combined": ("address", "bound"), "pixel": (), "hausdorff": ()}
MODEL_FREE = tuple(c for c in CLASSIFIERS if not _MODEL_SCORES[c])
# What each classifier compares, for the results table.
_WHOSE = {"pixel": "no model: Hamming distance",
          "hausdorff": "no model: modified Hausdorff distance, 105 x 105"}
RESULT_FILES = ("results.json", "results.csv", "results.md", "wrong.png")
# wrong.png draws at most this many mistakes of each of the address and bound classifiers.
MAX_DRAWN = 24
_Z_95 = 1.959963984540054


class ClassifyError(ValueError):
  """Settings the command cannot use; the message says what is expected."""


def parse_classifiers(text: str | Sequence[str]) -> tuple[str, ...]:
  """'address,bound' -> ('address', 'bound'), in CLASSIFIERS' order; unknown names refused."""
  names = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
  names = [n for n in names if n]
  unknown = sorted(set(names) - set(CLASSIFIERS))
  if unknown or not names:
    raise ClassifyError(f"--classifiers={','.join(names)}: expected a comma-separated list of "
                        f"{', '.join(CLASSIFIERS)}")
  return tuple(c for c in CLASSIFIERS if c in names)


def wilson_interval(errors: int, trials: int, z: float = _Z_95) -> tuple[float, float]:
  """The Wilson score interval (95% by default) of an error rate errors / trials."""
  if trials <= 0:
    return (math.nan, math.nan)
  p = errors / trials
  centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
  half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
  return (max(0.0, centre - half), min(1.0, centre + half))


# ----------------------------------------------------------------------------------------
# The jitted scores of a batch of trials: B test images, each with its run's J training images.


def make_address_fn(model: vma_model.Read):
  """A jitted `(params, x_BxHxW, memory_BxJxHxW) -> q(a|x,M)'s logits of the J memory
  slots, B x J` (the learned slots dropped): <h(x), h(m_c)> for the VMA."""

  def address_fn(params, x_BxHxW, memory_BxJxHxW):
    encoding = model.apply(params, x_BxHxW, memory_BxJxHxW, False, method="encode")
    address = model.apply(params, encoding, method="address")
    return address.logits_BxS[:, :address.memory_size]

  return jax.jit(address_fn)


def make_bound_fn(model: vma_model.Read, *, num_importance: int, chunk_size: int):
  """A jitted `(params, x_BxHxW, memory_BxJxHxW, key, trial_B) -> L_K(x | m_c), B x J`.

  The B * J episodes (x, (m_c)) have one-image memories; episode (n, c) draws its samples
  from fold_in(fold_in(key, n), c), with n = trial_B[b] the trial's index.
  """

  def bound_fn(params, x_BxHxW, memory_BxJxHxW, key, trial_B):
    batch, num_classes = memory_BxJxHxW.shape[:2]
    size = x_BxHxW.shape[1:]
    # Episode-major rows N = B * J: row b * J + c is the episode (x_b, (m_bc)).
    x_NxHxW = jnp.broadcast_to(x_BxHxW[:, None], memory_BxJxHxW.shape).reshape((-1, *size))
    memory_Nx1xHxW = memory_BxJxHxW.reshape((-1, 1, *size))
    class_J = jnp.arange(num_classes, dtype=jnp.uint32)
    keys_BxJ = jax.vmap(lambda n: jax.vmap(
        lambda c: jax.random.fold_in(jax.random.fold_in(key, n), c))(class_J))(trial_B)
    encoding = model.apply(params, x_NxHxW, memory_Nx1xHxW, method="encode")
    bound_N = objective.streaming_bound(
        model.apply, params, x_NxHxW, memory_Nx1xHxW, keys_BxJ.reshape(-1),
        num_importance=num_importance, chunk_size=chunk_size, encoding=encoding)
    return bound_N.reshape(batch, num_classes)

  return jax.jit(bound_fn)


def unavailable(model: vma_model.Read, params, classifiers: Sequence[str],
                image_size: int) -> str | None:
  """Why this model cannot do some of `classifiers`, in one line; None if it can do all."""
  needed = {score for c in classifiers for score in _MODEL_SCORES[c]}
  if needed and not model.reads_memory:
    return (f"its model ({type(model).__name__}) reads no memory: only "
            f"--classifiers={','.join(MODEL_FREE)} apply")
  if "address" in needed:
    x_1xHxW = jax.ShapeDtypeStruct((1, image_size, image_size), jnp.float32)
    memory_1x1xHxW = jax.ShapeDtypeStruct((1, 1, image_size, image_size), jnp.float32)
    address = jax.eval_shape(lambda p, x, m: model.apply(
        p, model.apply(p, x, m, False, method="encode"), method="address"),
        params, x_1xHxW, memory_1x1xHxW)
    if address is None:
      return (f"its model ({type(model).__name__}) has no address q(a|x,M), so the address "
              f"and combined classifiers do not apply: choose among --classifiers="
              f"{','.join(c for c in CLASSIFIERS if 'address' not in _MODEL_SCORES[c])}")
  return None


@jax.jit
def hamming_distances(x_BxHxW, memory_BxJxHxW):
  """The number of pixels where x and m_c differ, B x J (int32)."""
  return jnp.sum(x_BxHxW[:, None] != memory_BxJxHxW, axis=(-2, -1), dtype=jnp.int32)


# ----------------------------------------------------------------------------------------
# The modified Hausdorff distance (Dubuisson and Jain, 1994) between 105 x 105 ink masks, as
# Lake et al.'s one-shot demo computes it. Here P and F are the inked pixels of two images,
# and of one image Y its inked rows and X its distinct inked columns.


def _ink_pixels(ink_HxW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(row, column) of each inked pixel, row-major, float64 (pixels_Px2), and their mean."""
  row_P, column_P = np.nonzero(ink_HxW)
  if not len(row_P):
    raise ClassifyError("an image without ink has no modified Hausdorff distance; the "
                        "one-shot runs' images all have ink: read them with one_shot.load_runs")
  pixels_Px2 = np.stack([row_P, column_P], axis=1).astype(np.float64)
  # Each coordinate's mean over its own contiguous array: the summation order of the demo's.
  mean_2 = np.array([pixels_Px2[:, 0].copy().mean(), pixels_Px2[:, 1].copy().mean()])
  return pixels_Px2, mean_2


def ink_points(ink_HxW: np.ndarray) -> np.ndarray:
  """The (row, column) of each inked pixel, row-major, float64, minus their mean: points_Px2.

  Centring makes the distance blind to where on the page the character was drawn.
  """
  pixels_Px2, mean_2 = _ink_pixels(ink_HxW)
  return pixels_Px2 - mean_2


def modified_hausdorff(a_Px2: np.ndarray, b_Fx2: np.ndarray) -> float:
  """max(mean_a min_b |a - b|, mean_b min_a |a - b|) of two point sets, from all P x F
  Euclidean distances (the definition; `hausdorff_costs` computes it faster on masks)."""
  diff_PxFx2 = a_Px2[:, None, :] - b_Fx2[None, :, :]
  dist_PxF = np.sqrt(diff_PxFx2[..., 0] ** 2 + diff_PxFx2[..., 1] ** 2)
  return float(max(np.mean(dist_PxF.min(axis=1)), np.mean(dist_PxF.min(axis=0))))


class _InkGrid:
  """One ink mask's centred inked pixels, and what the distance from any point to the
  nearest of them needs: for each inked row, the nearest inked column at or left of, and at
  or right of, every column position in [-W, 2W)."""

  def __init__(self, ink_HxW: np.ndarray):
    ink_HxW = np.asarray(ink_HxW).astype(bool)
    width = ink_HxW.shape[1]
    pixels_Px2, self.mean_2 = _ink_pixels(ink_HxW)
    self.points_Px2 = pixels_Px2 - self.mean_2
    # As the query: the distinct columns' centred values, and each pixel's column among them.
    columns_X, self.column_index_P = np.unique(pixels_Px2[:, 1], return_inverse=True)
    self.columns_X = columns_X - self.mean_2[1]
    # As the target: the inked rows' centred values; column positions [-W, 2W) hold every
    # column another centred image can ask for (|centred column| < W).
    rows_Y = np.flatnonzero(ink_HxW.any(axis=1))
    self.rows_Y = rows_Y.astype(np.float64) - self.mean_2[0]
    self.offset = width
    ink_Yx3W = np.zeros((len(rows_Y), 3 * width), bool)
    ink_Yx3W[:, width:2 * width] = ink_HxW[rows_Y]
    position_3W = np.arange(-width, 2 * width)
    left_Yx3W = np.maximum.accumulate(np.where(ink_Yx3W, position_3W, -3 * width), axis=1)
    right_Yx3W = np.minimum.accumulate(np.where(ink_Yx3W, position_3W, 3 * width)[:, ::-1],
                                       axis=1)[:, ::-1]
    # Centred as the points are (column - mean); no inked pixel on that side: infinitely far.
    self.left_Yx3W = np.where(left_Yx3W > -3 * width,
                              left_Yx3W.astype(np.float64) - self.mean_2[1], -np.inf)
    self.right_Yx3W = np.where(right_Yx3W < 3 * width,
                               right_Yx3W.astype(np.float64) - self.mean_2[1], np.inf)


def _mean_nearest(query: _InkGrid, target: _InkGrid) -> float:
  """mean over the query's inked pixels of the distance to the nearest inked pixel of target
  (both centred): mean_a min_b |a - b|.

  Squared distances are separable: min_b |a - b|^2 = min over target's inked rows of (row
  difference)^2 + (distance to that row's nearest inked column)^2, and in a row the nearest
  column lies next to where a's column falls on target's grid. Each difference is the same
  float64 a - b as with all pairwise distances, so the result is bitwise theirs.
  """
  at_X = query.columns_X + target.mean_2[1]  # a's column on target's grid, uncentred
  k_X = np.floor(at_X).astype(np.int64) + target.offset
  # The nearest inked column on either side of a's column (one more to the right: a's
  # column may sit a rounding error off an integer).
  near_YxXx3 = np.stack([target.left_Yx3W[:, k_X], target.right_Yx3W[:, k_X],
                         target.right_Yx3W[:, k_X + 1]], axis=-1)
  column2_YxX = np.min((query.columns_X[None, :, None] - near_YxXx3) ** 2, axis=-1)
  row2_PxY = (query.points_Px2[:, :1] - target.rows_Y[None, :]) ** 2
  nearest2_P = np.min(row2_PxY + column2_YxX.T[query.column_index_P], axis=1)
  # sqrt is monotone: the nearest distance is the sqrt of the nearest squared one.
  return float(np.mean(np.sqrt(nearest2_P)))


def hausdorff_costs(test_QxHxW: np.ndarray, train_JxHxW: np.ndarray) -> np.ndarray:
  """The modified Hausdorff distance between each test and each training ink mask, on their
  centred inked pixels (`ink_points`), float64 Q x J: as `modified_hausdorff`, exactly."""
  test_Q = [_InkGrid(x) for x in test_QxHxW]
  train_J = [_InkGrid(m) for m in train_JxHxW]
  return np.array([[max(_mean_nearest(x, m), _mean_nearest(m, x)) for m in train_J]
                   for x in test_Q])


def class_scores(runs: one_shot.OneShotRuns, classifiers: Sequence[str], *,
                 model: vma_model.Read | None = None, params=None, num_importance: int = 1000,
                 chunk_size: int = 10, batch_size: int = 10, seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """Each classifier's score of each class for every trial, float64 N x J, highest = the
  prediction (run-major: trial n is test image n % Q of run n // Q).

  "address": <h(x), h(m_c)>; "bound": L_K(x | m_c); "combined": the sum of their log_softmax
  over c; "pixel": minus the Hamming distance; "hausdorff": minus the modified Hausdorff
  distance of the 105 x 105 images (`runs.has_source`). The model's scores need `model` and
  `params`, and a model that can give them (`unavailable`).
  """
  needed = {score for c in classifiers for score in _MODEL_SCORES[c]}
  if needed and (model is None or params is None):
    raise ClassifyError(f"the {', '.join(sorted(needed))} scores need a trained model")
  if needed:
    reason = unavailable(model, params, classifiers, runs.test_GxQxHxW.shape[-1])
    if reason is not None:
      raise ClassifyError(f"this model cannot classify so: {reason}")
  if "hausdorff" in classifiers and not runs.has_source:
    raise ClassifyError("the hausdorff classifier needs the runs' 105 x 105 images: read the "
                        "runs with one_shot.load_runs")
  test_NxHxW = runs.test_GxQxHxW.reshape((-1, *runs.test_GxQxHxW.shape[2:]))
  num_test = runs.test_GxQxHxW.shape[1]
  # Each trial's memory: its run's J training images.
  memory_NxJxHxW = np.repeat(runs.train_GxJxHxW, num_test, axis=0)
  trial_N = np.arange(len(test_NxHxW))
  x_NxHxW, m_NxJxHxW = test_NxHxW.astype(np.float32), memory_NxJxHxW.astype(np.float32)
  in_batches = lambda fn, size, **kwargs: batches.in_batches(fn, trial_N, size, items="trials",
                                                            **kwargs)
  scores = {}
  if "address" in needed:
    address_fn = make_address_fn(model)
    scores["address"] = in_batches(lambda n: address_fn(params, x_NxHxW[n], m_NxJxHxW[n]),
                                   batch_size)
  if "bound" in needed:
    bound_fn = make_bound_fn(model, num_importance=num_importance, chunk_size=chunk_size)
    key = jax.random.key(seed)
    start = time.perf_counter()
    scores["bound"] = in_batches(
        lambda n: bound_fn(params, x_NxHxW[n], m_NxJxHxW[n], key, n.astype(np.uint32)),
        batch_size, name=f"L_{num_importance}: ")
    logging.info("L_%d of %d x %d episodes in %.0f s", num_importance, len(x_NxHxW),
                 m_NxJxHxW.shape[1], time.perf_counter() - start)
    if not np.all(np.isfinite(scores["bound"])):
      raise FloatingPointError("non-finite bound: the checkpoint's parameters may be corrupt")
  scores = {k: v.astype(np.float64) for k, v in scores.items()}
  if "combined" in classifiers:
    log_softmax = lambda v: v - np.logaddexp.reduce(v, axis=-1, keepdims=True)
    scores["combined"] = log_softmax(scores["address"]) + log_softmax(scores["bound"])
  if "pixel" in classifiers:
    scores["pixel"] = -in_batches(lambda n: hamming_distances(test_NxHxW[n], memory_NxJxHxW[n]),
                                  max(batch_size, 100)).astype(np.float64)
  if "hausdorff" in classifiers:
    cost_GxQxJ = np.stack([hausdorff_costs(test_QxHxW, train_JxHxW) for test_QxHxW, train_JxHxW
                           in zip(runs.source_test_GxQxHxW, runs.source_train_GxJxHxW)])
    scores["hausdorff"] = -cost_GxQxJ.reshape((-1, cost_GxQxJ.shape[-1]))
  return {c: scores[c] for c in classifiers}


# ----------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass(frozen=True)
class ClassifierResult:
  """One classifier on all trials: its predictions (class indices, R x Q) and errors."""

  name: str
  predicted_GxQ: np.ndarray
  answer_GxQ: np.ndarray

  @property
  def errors_G(self) -> np.ndarray:
    return np.sum(self.predicted_GxQ != self.answer_GxQ, axis=1)

  @property
  def errors(self) -> int:
    return int(self.errors_G.sum())

  @property
  def trials(self) -> int:
    return int(self.answer_GxQ.size)

  @property
  def error_rate(self) -> float:
    return self.errors / self.trials

  @property
  def interval(self) -> tuple[float, float]:
    return wilson_interval(self.errors, self.trials)


def predictions(runs: one_shot.OneShotRuns,
                scores: dict[str, np.ndarray]) -> list[ClassifierResult]:
  """Each classifier's argmax_c of its scores (the first class of a tie) as a result."""
  shape = runs.answer_GxQ.shape
  return [ClassifierResult(name, np.argmax(s, axis=-1).reshape(shape), runs.answer_GxQ)
          for name, s in scores.items()]


def results_json(runs: one_shot.OneShotRuns, results: Sequence[ClassifierResult],
                 meta: dict) -> dict:
  """What results.json holds: the meta, and per classifier its errors per run, its overall
  error rate with the 95% Wilson interval, and every prediction."""
  out = {"meta": meta, "classifiers": {}}
  for r in results:
    out["classifiers"][r.name] = {
        "errors": r.errors, "trials": r.trials, "error_rate": r.error_rate,
        "wilson_95": list(r.interval),
        "errors_per_run": {run.name: int(e) for run, e in zip(runs.runs, r.errors_G)},
        "predictions": [
            {"run": run.name, "item": run.item_names_Q[q],
             "predicted": run.class_names_J[r.predicted_GxQ[i, q]],
             "answer": run.class_names_J[r.answer_GxQ[i, q]],
             "correct": bool(r.predicted_GxQ[i, q] == r.answer_GxQ[i, q])}
            for i, run in enumerate(runs.runs) for q in range(len(run.item_names_Q))],
    }
  return out


def results_csv(runs: one_shot.OneShotRuns, results: Sequence[ClassifierResult]) -> str:
  """One row per classifier and run, and one overall row per classifier."""
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(["classifier", "run", "errors", "trials", "error_rate", "wilson_95_low",
                   "wilson_95_high"])
  for r in results:
    per_run = len(r.answer_GxQ[0])
    for run, errors in zip(runs.runs, r.errors_G):
      low, high = wilson_interval(int(errors), per_run)
      writer.writerow([r.name, run.name, int(errors), per_run, errors / per_run, low, high])
    writer.writerow([r.name, "all", r.errors, r.trials, r.error_rate, *r.interval])
  return text.getvalue()


def results_markdown(results: Sequence[ClassifierResult], meta: dict) -> str:
  """A table of each classifier's error % with its 95% interval, then Lake et al.'s
  published figures, labelled as theirs."""
  num_runs = len(results[0].answer_GxQ)
  runs = (f"Lake et al.'s {num_runs} runs" if num_runs == one_shot.NUM_RUNS else
          f"the first {num_runs} of Lake et al.'s {one_shot.NUM_RUNS} runs")
  lines = [f"20-way one-shot classification, {runs} ({results[0].trials} trials); "
           f"checkpoint step {meta.get('step')}, "
           f"K = {meta.get('num_importance')}, seed {meta.get('seed')}.", "",
           "| classifier | error % | 95% interval (Wilson) | errors / trials |",
           "|---|---|---|---|"]
  for r in results:
    low, high = r.interval
    whose = _WHOSE.get(r.name, "this model")
    lines.append(f"| {r.name} ({whose}) | {100 * r.error_rate:.1f} | "
                 f"{100 * low:.1f} – {100 * high:.1f} | {r.errors} / {r.trials} |")
  for name, error in one_shot.PUBLISHED:
    lines.append(f"| {name} (Lake et al. 2015, published) | {error:.1f} | – | – |")
  return "\n".join(lines) + "\n"


def wrong_figure(runs: one_shot.OneShotRuns, results: Sequence[ClassifierResult], title: str,
                 max_drawn: int = MAX_DRAWN):
  """The figure of the address and bound classifiers' mistakes (`figures.one_shot_mistakes`):
  the test image, the predicted and the correct training image, at most max_drawn of each."""
  groups = []
  for r in results:
    if r.name not in ("address", "bound"):
      continue
    wrong = np.argwhere(r.predicted_GxQ != r.answer_GxQ)
    drawn = []
    for i, q in wrong[:max_drawn]:
      run = runs.runs[i]
      predicted, answer = r.predicted_GxQ[i, q], r.answer_GxQ[i, q]
      drawn.append(figures.Mistake(
          x_HxW=run.test_QxHxW[q], predicted_HxW=run.train_JxHxW[predicted],
          answer_HxW=run.train_JxHxW[answer],
          labels=(f"{run.name} {run.item_names_Q[q][:-4]}",
                  f"said {run.class_names_J[predicted][:-4]}",
                  f"is {run.class_names_J[answer][:-4]}")))
    groups.append(figures.MistakeGroup(name=r.name, num_wrong=len(wrong), num_trials=r.trials,
                                       mistakes=drawn))
  return figures.one_shot_mistakes(groups, title=title)


def write_results(runs: one_shot.OneShotRuns, results: Sequence[ClassifierResult], out_dir: str,
                  meta: dict) -> dict[str, str]:
  """results.json, results.csv, results.md and wrong.png in out_dir (atomically each); the
  earlier ones there are kept as results.<n>.* and wrong.<n>.png."""
  texts = {"results.json": json.dumps(results_json(runs, results, meta), indent=2) + "\n",
           "results.csv": results_csv(runs, results),
           "results.md": results_markdown(results, meta)}
  paths = vma_results.write_files(out_dir, texts, RESULT_FILES)
  if any(r.name in ("address", "bound") for r in results):
    paths["wrong.png"] = os.path.join(out_dir, "wrong.png")
    title = (f"{os.path.basename(os.path.normpath(meta.get('workdir', '')))}, step "
             f"{meta.get('step')}: one-shot trials classified wrong")
    figures.write_png(wrong_figure(runs, results, title), paths["wrong.png"])
  return paths


def check_num_runs(num_runs: int | None) -> None:
  """Raises ClassifyError unless `num_runs` is None (all runs) or 1 .. NUM_RUNS."""
  if num_runs is not None and not 1 <= num_runs <= one_shot.NUM_RUNS:
    raise ClassifyError(f"--num_runs={num_runs}: choose 1 to {one_shot.NUM_RUNS} of Lake et "
                        "al.'s runs (all of them by default)")


def classify_workdir(workdir: str, *, runs: str | None = None, num_importance: int = 1000,
                     classifiers: str | Sequence[str] = CLASSIFIERS, step: int | None = None,
                     seed: int = 0, batch_size: int = 10, chunk_size: int = 10,
                     num_runs: int | None = None, out: str | None = None
                     ) -> tuple[list[ClassifierResult], dict[str, str]]:
  """Restores a run's checkpoint (default: the latest), classifies the 400 trials of the
  one-shot runs (`runs`, default `$VMA_ONE_SHOT_RUNS`; only the first `num_runs` of the 20
  runs if given: a quicker, coarser look) and writes the results to `out` (default:
  workdir/classify/). Returns (the results, the paths written)."""
  classifiers = parse_classifiers(classifiers)
  if num_importance < 1 or batch_size < 1 or chunk_size < 1:
    raise ClassifyError(f"--num_importance={num_importance}, --batch_size={batch_size}, "
                        f"--chunk_size={chunk_size}: each must be at least 1")
  check_num_runs(num_runs)
  source = one_shot.resolve_source(runs)
  params, step, config = checkpoints.restore_params(workdir, step)
  model = vma_model.make_model(config)
  reason = unavailable(model, params, classifiers, config.data.image_size)
  if reason is not None:
    raise ClassifyError(f"{workdir}: {reason}")
  loaded = one_shot.load_runs(source, image_size=config.data.image_size)
  loaded = dataclasses.replace(loaded, runs=loaded.runs[:num_runs])
  start = time.perf_counter()
  scores = class_scores(loaded, classifiers, model=model, params=params,
                        num_importance=num_importance, chunk_size=chunk_size,
                        batch_size=batch_size, seed=seed)
  seconds = time.perf_counter() - start
  results = predictions(loaded, scores)
  device = jax.devices()[0]
  meta = dict(workdir=os.path.abspath(workdir), step=int(step), num_importance=num_importance,
              seed=seed, params_sha256=checkpoints.tree_digest(params),
              device=f"{device.platform}: {device.device_kind}", cpu_count=os.cpu_count(),
              runs=loaded.source, runs_sha256=loaded.sha256, num_runs=len(loaded.runs),
              batch_size=batch_size,
              chunk_size=chunk_size, seconds=round(seconds, 1))
  paths = write_results(loaded, results, out or os.path.join(workdir, "classify"), meta)
  for r in results:
    low, high = r.interval
    logging.info("%-8s %5.1f%% wrong (95%%: %.1f-%.1f), %d/%d", r.name, 100 * r.error_rate,
                 100 * low, 100 * high, r.errors, r.trials)
  return results, paths
