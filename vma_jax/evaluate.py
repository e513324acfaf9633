"""Few-shot evaluation: the Table 1 grid of ELBO@K bounds on the Omniglot test split.

For a cell (C, T) every test image is the target of exactly one episode, whose memory holds T
other images from at most C classes (see `vma_jax.episodes.sample_cell_episodes`). The cell's
figure is the mean over targets of -L_K, in nats per image (positive, lower is better), with
L_K the K-sample importance-weighted bound computed in chunks (`objective.streaming_bound`).

Episodes and samples depend only on (seed, C, T, target index), never on the batch size or on
the chunking, so a figure is reproducible on any device count, and the bounds of two
computation dtypes on the same checkpoint differ by the precision alone (`precision_gaps`).
"""

import collections
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from typing import Callable, Iterable, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vma_jax import checkpoints
from vma_jax import data as vma_data
from vma_jax import distributed
from vma_jax import episodes as vma_episodes
from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax import sharding

# ELBO@1000 in nats on the test split, from model.md: {(C, T): (paper, reproduction)}.
REFERENCE = {
    (1, 1): (86.5, 85.2), (1, 2): (83.0, 79.8), (1, 3): (79.6, 77.5), (1, 4): (79.0, 76.2),
    (1, 5): (76.5, 75.3), (1, 10): (76.2, 73.2), (1, 19): (73.9, 71.8),
    (2, 1): (87.5, 85.2), (2, 2): (83.3, 82.7), (2, 3): (80.9, 80.1), (2, 4): (79.3, 78.5),
    (2, 5): (79.1, 77.5), (2, 10): (77.0, 75.2), (2, 19): (75.0, 73.5),
}
GRID = ",".join(f"{c}:{t}" for c, t in REFERENCE)
# Batches of targets dispatched before the oldest is read back (`cell_bounds`).
_BATCHES_AHEAD = 4


@dataclasses.dataclass(frozen=True)
class CellResult:
  """-L_K on one cell: mean over targets, its standard error, K and the number of targets."""

  max_classes: int
  memory_size: int
  bound: float
  stderr: float
  num_importance: int
  num_targets: int
  seconds: float


def parse_cells(cells: str) -> list[tuple[int, int]]:
  """'1:1,1:2,2:19' -> [(1, 1), (1, 2), (2, 19)]."""
  parsed = []
  for item in cells.replace(" ", "").split(","):
    if not item:
      continue
    try:
      max_classes, memory_size = (int(v) for v in item.split(":"))
    except ValueError:
      raise ValueError(f"bad cell {item!r}: cells are written C:T, e.g. '1:5,2:19'") from None
    if max_classes < 1 or memory_size < 1:
      raise ValueError(f"bad cell {item!r}: C and T must be positive")
    parsed.append((max_classes, memory_size))
  if not parsed:
    raise ValueError(f"no cells in {cells!r}")
  return parsed


def target_indices(num_images: int, num_targets: int) -> np.ndarray:
  """All targets (num_targets <= 0), or num_targets of them spread evenly over the split.

  The split is ordered by class, so an evenly spread subset covers the classes evenly.
  """
  if num_targets <= 0 or num_targets >= num_images:
    return np.arange(num_images, dtype=np.int32)
  return (np.arange(num_targets, dtype=np.int64) * num_images // num_targets).astype(np.int32)


def make_cell_bound_fn(model: vma_model.VMA, *, max_classes: int, memory_size: int,
                       num_importance: int, chunk_size: int, mesh=None):
  """A jitted `(params, data, key, target_index_B) -> L_K per target` on cell episodes.

  The episode of target i and its K samples depend only on (key, i). Targets (and their
  bounds) are sharded over `mesh` (default: every process's devices); params and data are
  replicated. `cell_bounds` feeds it and reads the bounds back.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  replicated, batch = sharding.shardings(mesh)

  def cell_bound(params, data, key, target_index_B):
    episode_key, sample_key = jax.random.split(key)
    episodes = vma_episodes.sample_cell_episodes(
        data, episode_key, target_index_B, max_classes=max_classes, memory_size=memory_size)
    sample_keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(sample_key, target_index_B)
    return objective.streaming_bound(
        model.apply, params, episodes.x_BxHxW, episodes.memory_BxTxHxW, sample_keys_B,
        num_samples=num_importance, chunk_size=chunk_size)

  return jax.jit(cell_bound, in_shardings=(replicated, replicated, replicated, batch),
                 out_shardings=batch)


def cell_bounds(bound_fn, params, data, key, targets_N: np.ndarray, batch_size: int, *,
                mesh=None, log_every_s: float = 60.0, name: str = "") -> np.ndarray:
  """L_K of every target in targets_N (float64, shape N), in batches of batch_size.

  The last batch is padded (with targets repeated from the start of targets_N) to keep one
  compiled shape; the padding's bounds are dropped. Every `log_every_s` seconds a log line
  (prefixed `name`) says how many targets are done and how long the rest should take.

  With `mesh` (the one `bound_fn` shards the targets over) each batch goes to the devices as
  one array sharded over it, each process placing its own devices' targets, as several
  processes need; without, as a numpy array (one process). Every process gets all bounds.
  """
  num_targets = len(targets_N)
  padded_N = np.resize(targets_N, -(-num_targets // batch_size) * batch_size).astype(np.int32)
  in_flight, bounds_by_batch = collections.deque(), []
  start = last_log = time.perf_counter()
  for i in range(0, len(padded_N), batch_size):
    target_index_B = padded_N[i:i + batch_size]
    if mesh is not None:
      target_index_B = sharding.shard_batch(target_index_B, mesh)
    in_flight.append(bound_fn(params, data, key, target_index_B))
    # Batches queued ahead: the devices never wait for the host, which meanwhile reads the
    # oldest back (and so knows how far the cell has got).
    last = i + batch_size == len(padded_N)
    while len(in_flight) > _BATCHES_AHEAD or (last and in_flight):
      # The bounds of other processes' devices too (on one process, a plain read-back).
      bounds_by_batch.append(np.asarray(
          multihost_utils.process_allgather(in_flight.popleft(), tiled=True), np.float64))
      done, now = min(len(bounds_by_batch) * batch_size, num_targets), time.perf_counter()
      if now - last_log >= log_every_s and done < num_targets:
        left_s = (now - start) / done * (num_targets - done)
        logging.info("%s%d/%d targets, %.0f s left", name, done, num_targets, left_s)
        last_log = now
  return np.concatenate(bounds_by_batch)[:num_targets]


def cell_key(seed: int, max_classes: int, memory_size: int) -> jax.Array:
  """The key of a cell: its episodes and samples do not depend on which other cells run."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), max_classes), memory_size)


def cell_neg_bounds(model: vma_model.VMA, params, data, *, max_classes: int, memory_size: int,
                    num_importance: int, targets: np.ndarray, batch_size: int, chunk_size: int,
                    seed: int, mesh=None) -> tuple[np.ndarray, float]:
  """-L_K of every target in `targets` on cell (C, T) (nats, float64), and the seconds taken.

  The seconds include compiling the cell's bound function.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  sharding.check_batch_size(batch_size, mesh)
  bound_fn = make_cell_bound_fn(model, max_classes=max_classes, memory_size=memory_size,
                                num_importance=num_importance, chunk_size=chunk_size,
                                mesh=mesh)
  start_time = time.perf_counter()
  neg_bound_N = -cell_bounds(bound_fn, params, data, cell_key(seed, max_classes, memory_size),
                             targets, batch_size, mesh=mesh,
                             name=f"C={max_classes} T={memory_size}: ")
  seconds = time.perf_counter() - start_time
  if not np.all(np.isfinite(neg_bound_N)):
    raise FloatingPointError(
        f"non-finite bound in cell C={max_classes}, T={memory_size}: the checkpoint's "
        "parameters may be corrupt")
  return neg_bound_N, seconds


def _mean_and_stderr(values_N: np.ndarray) -> tuple[float, float]:
  num = len(values_N)
  stderr = float(values_N.std(ddof=1) / math.sqrt(num)) if num > 1 else float("nan")
  return float(values_N.mean()), stderr


def evaluate_cell(model: vma_model.VMA, params, data, *, max_classes: int, memory_size: int,
                  num_importance: int, targets: np.ndarray, batch_size: int, chunk_size: int,
                  seed: int, mesh=None) -> CellResult:
  """-L_K over `targets` on cell (C, T) = (max_classes, memory_size): mean and stderr."""
  neg_bound_N, seconds = cell_neg_bounds(
      model, params, data, max_classes=max_classes, memory_size=memory_size,
      num_importance=num_importance, targets=targets, batch_size=batch_size,
      chunk_size=chunk_size, seed=seed, mesh=mesh)
  bound, stderr = _mean_and_stderr(neg_bound_N)
  return CellResult(max_classes, memory_size, bound, stderr, num_importance, len(neg_bound_N),
                    seconds)


def device_data(split: "vma_data.OmniglotSplit", mesh) -> vma_episodes.EpisodeData:
  """The split's images and labels, replicated on every device of `mesh`: episodes are then
  drawn on the devices (training and evaluation alike). Each process copies them onto its own
  devices of the mesh."""
  arrays = jax.device_get(vma_episodes.EpisodeData.from_split(split))
  return sharding.replicate(arrays, mesh)


def _on_devices(split: "vma_data.OmniglotSplit", num_targets: int):
  """(mesh over every process's devices, the split's images replicated on it, targets)."""
  mesh = sharding.make_mesh()
  return mesh, device_data(split, mesh), target_indices(len(split.labels_N), num_targets)


def evaluate_grid(model: vma_model.VMA, params, split: "vma_data.OmniglotSplit",
                  cells: Sequence[tuple[int, int]], *, num_importance: int, num_targets: int,
                  batch_size: int, chunk_size: int, seed: int,
                  done: Mapping[tuple[int, int], CellResult] | None = None,
                  on_result: Callable[[CellResult], None] | None = None) -> list[CellResult]:
  """Every cell of `cells` on `split`, each target once per cell.

  Cells in `done` (keyed (C, T), from an evaluation with the same settings) are taken from it,
  not evaluated again; `on_result` is called with each newly evaluated cell's result.
  """
  done = done or {}
  mesh, data, targets = _on_devices(split, num_targets)
  results = []
  for max_classes, memory_size in cells:
    reused = (max_classes, memory_size) in done
    if reused:
      result = done[(max_classes, memory_size)]
    else:
      result = evaluate_cell(
          model, params, data, max_classes=max_classes, memory_size=memory_size,
          num_importance=num_importance, targets=targets, batch_size=batch_size,
          chunk_size=chunk_size, seed=seed, mesh=mesh)
      if on_result is not None:
        on_result(result)
    logging.info("C=%d T=%2d  -L_%d = %.2f +- %.2f nats  (%d targets, %.0f s%s)", max_classes,
                 memory_size, num_importance, result.bound, result.stderr, result.num_targets,
                 result.seconds, ", done before" if reused else "")
    results.append(result)
  return results


def results_markdown(results: Iterable[CellResult]) -> str:
  """A Markdown table of the results beside the paper's and the reproduction's numbers."""
  lines = ["| C | T | ours | ± | paper | reproduction | K | targets |",
           "|---|---|---|---|---|---|---|---|"]
  for r in results:
    paper, repro = REFERENCE.get((r.max_classes, r.memory_size), (None, None))
    fmt = lambda v: "–" if v is None else f"{v:.1f}"
    lines.append(f"| {r.max_classes} | {r.memory_size} | {r.bound:.2f} | {r.stderr:.2f} | "
                 f"{fmt(paper)} | {fmt(repro)} | {r.num_importance} | {r.num_targets} |")
  return "\n".join(lines) + "\n"


RESULT_FILES = ("results.json", "results.csv", "results.md")


def _keep_previous_results(out_dir: str) -> str | None:
  """Moves out_dir/results.* to results.<n>.* (n: the first free); returns the new json path."""
  if not os.path.exists(os.path.join(out_dir, "results.json")):
    return None
  n = 1
  while os.path.exists(os.path.join(out_dir, f"results.{n}.json")):
    n += 1
  for name in RESULT_FILES:
    path = os.path.join(out_dir, name)
    if os.path.exists(path):
      stem, ext = os.path.splitext(name)
      os.replace(path, os.path.join(out_dir, f"{stem}.{n}{ext}"))
  return os.path.join(out_dir, f"results.{n}.json")


def write_results(results: Sequence[CellResult], out_dir: str, meta: dict) -> dict[str, str]:
  """Writes results.json, results.csv and results.md under out_dir (atomically each).

  Earlier results in out_dir are never overwritten: they are kept as results.<n>.{json,csv,md}
  (n = 1, 2, ...), so the latest evaluation is always results.*.
  """
  os.makedirs(out_dir, exist_ok=True)
  rows = [dataclasses.asdict(r) for r in results]
  for row in rows:
    row["paper"], row["reproduction"] = REFERENCE.get(
        (row["max_classes"], row["memory_size"]), (None, None))
  csv_text = io.StringIO()
  writer = csv.DictWriter(csv_text, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  header = (f"ELBO@{results[0].num_importance} (nats, lower is better) on the Omniglot test "
            f"split; checkpoint step {meta.get('step')}.\n\n")
  texts = {"json": json.dumps({"meta": meta, "results": rows}, indent=2),
           "csv": csv_text.getvalue(), "md": header + results_markdown(results)}

  kept = _keep_previous_results(out_dir)
  if kept:
    logging.info("Earlier results kept as %s (and .csv, .md)", kept)
  paths = {}
  for kind, text in texts.items():
    path = os.path.join(out_dir, f"results.{kind}")
    with open(path + ".tmp", "w", newline="") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
    paths[kind] = path
  return paths


def _params_digest(params) -> str:
  """sha256 of the parameters' bytes: tells two checkpoints apart, even of the same step."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(params)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


class _FinishedCells:
  """The cells an evaluation has finished, in out_dir/partial-<id>.json until it completes.

  <id> is a digest of what the bounds depend on (`identity`: the parameters, dtype, seed, K,
  number of targets; not the batch or chunk sizes, nor the devices), so a rerun of an
  interrupted evaluation takes up its cells, and other settings never read them.
  """

  def __init__(self, out_dir: str, identity: dict):
    self.identity = identity
    name = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    self.path = os.path.join(out_dir, f"partial-{name}.json")
    self.cells: dict[tuple[int, int], CellResult] = {}
    if os.path.exists(self.path):
      try:
        with open(self.path) as f:
          saved = json.load(f)
        if saved["identity"] == identity:
          self.cells = {(r["max_classes"], r["memory_size"]): CellResult(**r)
                        for r in saved["results"]}
      except (ValueError, KeyError, TypeError) as e:
        logging.warning("Ignoring %s, which cannot be read (%s): its cells are evaluated "
                        "again, and it is replaced when the first one finishes", self.path, e)

  def add(self, result: CellResult) -> None:
    """Records a finished cell (atomically: a kill leaves the previous file whole)."""
    self.cells[(result.max_classes, result.memory_size)] = result
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    with open(self.path + ".tmp", "w") as f:
      json.dump({"identity": self.identity,
                 "results": [dataclasses.asdict(r) for r in self.cells.values()]}, f, indent=1)
    os.replace(self.path + ".tmp", self.path)

  def remove_if_within(self, results: Sequence[CellResult]) -> None:
    """Removes the file once `results` hold every cell it has (else it stays, for later)."""
    written = {(r.max_classes, r.memory_size) for r in results}
    if os.path.exists(self.path) and set(self.cells) <= written:
      os.remove(self.path)


DTYPES = ("float32", "bfloat16", "float16")


def _with_dtype(config, dtype: str | None):
  """The run's config, computing in `dtype` (None: the run's own config.model.dtype)."""
  if dtype is None:
    return config
  if dtype not in DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  return config


def _settings_and_test_split(config, data_config, **arguments):
  """The evaluation settings (`_eval_settings`) and the test split of config.data (or of
  `data_config`, if given): what `evaluate_workdir` and `compare_precision` both need."""
  settings = _eval_settings(config, **arguments)
  split = vma_data.load_splits(data_config or config.data, splits=("test",))["test"]
  return settings, split


def _eval_settings(config, *, cells, num_importance, num_targets, seed, batch_size,
                   chunk_size) -> dict:
  """The evaluation settings: arguments given, else the run's config.eval values."""
  pick = lambda value, default: default if value is None else value
  return dict(
      cells=parse_cells(config.eval.cells if cells == "config" else cells),
      num_importance=pick(num_importance, config.eval.num_importance),
      num_targets=pick(num_targets, config.eval.num_targets),
      seed=pick(seed, config.eval.seed),
      batch_size=pick(batch_size, config.eval.batch_size),
      chunk_size=pick(chunk_size, config.eval.chunk_size))


def evaluate_workdir(workdir: str, *, cells: str = GRID, num_importance: int | None = None,
                     num_targets: int | None = None, seed: int | None = None,
                     batch_size: int | None = None, chunk_size: int | None = None,
                     dtype: str | None = None,
                     data_config: ml_collections.ConfigDict | None = None) -> list[CellResult]:
  """Restores the latest checkpoint of a training run and evaluates it on the test split.

  Arguments left None take the run's `config.eval` values (K = 1000, all targets, seed 0).

  Args:
    workdir: the training run's workdir (with config.json and checkpoints/).
    cells: "C:T,..." or "config" for the run's own config.eval.cells.
    num_importance: K.
    num_targets: targets per cell, spread evenly over the classes; 0 = the whole test split
      (13,180).
    seed: fixes the episodes and samples of every cell.
    batch_size, chunk_size: targets and samples processed at once.
    dtype: the networks' computation dtype (default: the run's config.model.dtype); check a
      lower precision first with `compare_precision`.
    data_config: overrides the run's config.data (e.g. another archive_dir).
  Returns:
    One CellResult per cell; also written to workdir/eval/results.{json,csv,md}, or to
    workdir/eval_<dtype>/ for a dtype other than the run's (so that a lower-precision
    evaluation never replaces the run's own results). Each cell is recorded as it finishes
    (`_FinishedCells`): the same call after an interruption evaluates only the cells left.
    With several processes, every one returns the results and process 0 writes the files.
  """
  params, step, run_config = checkpoints.restore_params(workdir)
  config = _with_dtype(run_config, dtype)
  settings, split = _settings_and_test_split(
      config, data_config, cells=cells, num_importance=num_importance, num_targets=num_targets,
      seed=seed, batch_size=batch_size, chunk_size=chunk_size)
  out_dir = os.path.join(workdir, "eval" if config.model.dtype == run_config.model.dtype
                         else f"eval_{config.model.dtype}")
  finished = _FinishedCells(out_dir, dict(
      params_sha256=_params_digest(params), step=int(step), dtype=config.model.dtype,
      **{k: settings[k] for k in ("seed", "num_importance", "num_targets")}))
  if finished.cells:
    logging.info("Taking up an interrupted evaluation: %d cell(s) done, in %s",
                 len(finished.cells), finished.path)
  # Every process reads the finished cells (all skip the same ones); process 0 writes.
  is_chief = distributed.is_chief()
  results = evaluate_grid(vma_model.make_model(config), params, split, **settings,
                          done=dict(finished.cells), on_result=finished.add if is_chief else None)
  meta = dict(workdir=os.path.abspath(workdir), step=int(step), seed=settings["seed"],
              dtype=config.model.dtype, device=str(jax.devices()[0].device_kind),
              num_devices=jax.device_count(), num_processes=jax.process_count())
  if is_chief:
    write_results(results, out_dir, meta)
    finished.remove_if_within(results)
  return results


@dataclasses.dataclass(frozen=True)
class PrecisionGap:
  """-L_K of one cell in two computation dtypes, on the same episodes and samples.

  `gap` is the mean over targets of the paired difference (-L_K in `dtype`) - (-L_K in
  `reference_dtype`), i.e. bound - reference_bound; `gap_stderr` its standard error.
  """

  max_classes: int
  memory_size: int
  reference_dtype: str
  dtype: str
  reference_bound: float
  bound: float
  gap: float
  gap_stderr: float
  max_abs_target_gap: float
  reference_seconds: float
  seconds: float
  num_importance: int
  num_targets: int


def precision_gaps(config, params, split, cells: Sequence[tuple[int, int]], *, dtype: str,
                   reference_dtype: str = "float32", num_importance: int, num_targets: int,
                   batch_size: int, chunk_size: int, seed: int) -> list[PrecisionGap]:
  """Each cell's -L_K with the networks computing in `dtype` and in `reference_dtype`.

  Both use the same parameters, episodes and sample keys (they depend only on the seed, the
  cell and the target), so the per-target differences are paired: they measure the effect of
  the precision alone. Each dtype's seconds include compiling its bound function.
  """
  if dtype == reference_dtype:
    raise ValueError(f"compare two different dtypes, got {dtype!r} twice")
  mesh, data, targets = _on_devices(split, num_targets)
  models = {d: vma_model.make_model(_with_dtype(config, d)) for d in (reference_dtype, dtype)}
  gaps = []
  for max_classes, memory_size in cells:
    neg_bounds, seconds = {}, {}
    for d, model in models.items():
      neg_bounds[d], seconds[d] = cell_neg_bounds(
          model, params, data, max_classes=max_classes, memory_size=memory_size,
          num_importance=num_importance, targets=targets, batch_size=batch_size,
          chunk_size=chunk_size, seed=seed, mesh=mesh)
    gap_N = neg_bounds[dtype] - neg_bounds[reference_dtype]
    gap, gap_stderr = _mean_and_stderr(gap_N)
    gaps.append(PrecisionGap(
        max_classes, memory_size, reference_dtype, dtype,
        reference_bound=float(neg_bounds[reference_dtype].mean()),
        bound=float(neg_bounds[dtype].mean()), gap=gap, gap_stderr=gap_stderr,
        max_abs_target_gap=float(np.abs(gap_N).max()),
        reference_seconds=seconds[reference_dtype], seconds=seconds[dtype],
        num_importance=num_importance, num_targets=len(gap_N)))
    logging.info("C=%d T=%2d  -L_%d: %s %.3f, %s %.3f, gap %+.3f +- %.3f nats", max_classes,
                 memory_size, num_importance, reference_dtype, gaps[-1].reference_bound,
                 dtype, gaps[-1].bound, gap, gap_stderr)
  return gaps


def compare_precision(workdir: str, *, dtype: str = "bfloat16",
                      reference_dtype: str = "float32", cells: str = GRID,
                      num_importance: int | None = None, num_targets: int | None = None,
                      seed: int | None = None, batch_size: int | None = None,
                      chunk_size: int | None = None,
                      data_config: ml_collections.ConfigDict | None = None
                      ) -> list[PrecisionGap]:
  """`precision_gaps` of the latest checkpoint of a training run, on the test split.

  Arguments left None take the run's `config.eval` values, as in `evaluate_workdir`. Nothing
  is written to the workdir.
  """
  params, _, config = checkpoints.restore_params(workdir)
  for d in (dtype, reference_dtype):
    _with_dtype(config, d)  # a clear error for an unknown dtype, before loading any data
  settings, split = _settings_and_test_split(
      config, data_config, cells=cells, num_importance=num_importance, num_targets=num_targets,
      seed=seed, batch_size=batch_size, chunk_size=chunk_size)
  return precision_gaps(config, params, split, dtype=dtype, reference_dtype=reference_dtype,
                        **settings)
