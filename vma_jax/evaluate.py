"""Few-shot evaluation: the Table 1 grid of -L_K on the Omniglot test split, and larger memories.

For a cell C:T every test image is the target of exactly one episode, whose memory holds T
other images from at most C classes (see `vma_jax.episodes.sample_cell_episodes`); for a cell
R/T, R images of the target's class among T (`sample_distractor_episodes`). The cell's
figure is the mean over targets of -L_K, in nats per image (positive, lower is better), with
L_K the K-sample importance-weighted bound computed in chunks (`vma_jax.cells`).
`evaluate_workdir` restores a run's checkpoint, evaluates the grid and writes the results
files (`vma_jax.results`), resuming an interrupted grid where it stopped.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from vma_jax import cells as vma_cells
from vma_jax import checkpoints
from vma_jax import data as vma_data
from vma_jax import distributed
from vma_jax import errors
from vma_jax import figures
from vma_jax import model as vma_model
from vma_jax import results as vma_results
from vma_jax import summaries


def evaluate_cell(model: vma_model.Read, params, data, cell: vma_cells.Cell, *,
                  num_importance: int, targets: np.ndarray, batch_size: int, chunk_size: int,
                  seed: int, mesh=None) -> vma_results.CellResult:
  """-L_K over `targets` on `cell`: mean and stderr, and the means of the targets'
  `objective.address_summary` (NaN for a read without an address)."""
  values, seconds = vma_cells.evaluate_targets(
      model, params, data, cell, num_importance=num_importance, targets=targets,
      batch_size=batch_size, chunk_size=chunk_size, seed=seed, mesh=mesh)
  bound, stderr = vma_cells.mean_and_stderr(values["neg_bound"])
  return vma_results.CellResult(
      max_classes=cell.max_classes, memory_size=cell.memory_size, same_class=cell.same_class,
      bound=bound, stderr=stderr,
      num_importance=num_importance, num_targets=len(values["neg_bound"]), seconds=seconds,
      **{name: float(np.mean(values[name])) for name in vma_results.ADDRESS_FIELDS
         if name in values})


def evaluate_grid(model: vma_model.Read, params, split: vma_data.OmniglotSplit,
                  cells: Sequence[vma_cells.Cell], *, num_importance: int, num_targets: int,
                  batch_size: int, chunk_size: int, seed: int,
                  done: Mapping[vma_cells.Cell, vma_results.CellResult] | None = None,
                  on_result: Callable[[vma_results.CellResult], None] | None = None
                  ) -> list[vma_results.CellResult]:
  """Every cell of `cells` on `split`, each target once per cell.

  Cells in `done` (from an evaluation with the same settings) are taken from it,
  not evaluated again; `on_result` is called with each newly evaluated cell's result.
  """
  done = done or {}
  mesh, data, targets = vma_cells.on_devices(split, num_targets)
  results = []
  for cell in cells:
    reused = cell in done
    if reused:
      result = done[cell]
    else:
      result = evaluate_cell(
          model, params, data, cell, num_importance=num_importance, targets=targets,
          batch_size=batch_size, chunk_size=chunk_size, seed=seed, mesh=mesh)
      if on_result is not None:
        on_result(result)
    logging.info("cell %-6s -L_%d = %.2f +- %.2f nats  (%d targets, %.0f s%s)", cell,
                 num_importance, result.bound, result.stderr, result.num_targets,
                 result.seconds, ", done before" if reused else "")
    results.append(result)
  return results


DTYPES = ("float32", "bfloat16", "float16")


def with_dtype(config, dtype: str | None):
  """The run's config, computing in `dtype` (None: the run's own config.model.dtype)."""
  if dtype is None:
    return config
  if dtype not in DTYPES:
    raise errors.ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  return config


def settings_and_test_split(config, data_config, **arguments):
  """The evaluation settings (arguments given, else the run's config.eval values) and the
  test split of config.data (or of `data_config`): what `evaluate_workdir` and the precision
  study (benchmarks/precision.py) both need."""
  settings = _eval_settings(config, **arguments)
  split = vma_data.load_splits(data_config or config.data, splits=("test",))["test"]
  return settings, split


def _eval_settings(config, *, cells, num_importance, num_targets, seed, batch_size,
                   chunk_size) -> dict:
  """The evaluation settings: arguments given, else the run's config.eval values."""
  pick = lambda value, default: default if value is None else value
  return dict(
      cells=vma_cells.parse_cells(
          config.eval.cells if cells == "config" else vma_results.GRIDS.get(cells, cells)),
      num_importance=pick(num_importance, config.eval.num_importance),
      num_targets=pick(num_targets, config.eval.num_targets),
      seed=pick(seed, config.eval.seed),
      batch_size=pick(batch_size, config.eval.batch_size),
      chunk_size=pick(chunk_size, config.eval.chunk_size))


def write_figures(results: Sequence[vma_results.CellResult], out_dir: str, *, step: int,
                  num_dummies: int, tensorboard: bool = True) -> dict[str, str]:
  """bound_vs_T.png and kl_vs_T.png of `results` in out_dir, and (with `tensorboard`) the
  same figures as image summaries there, at the checkpoint's `step`."""
  drawn = {"bound_vs_T": figures.bound_vs_memory(results),
           "kl_vs_T": figures.kl_vs_memory(results, num_dummies)}
  paths = {}
  for name, fig in drawn.items():
    paths[name] = os.path.join(out_dir, f"{name}.png")
    figures.write_png(fig, paths[name])
  writer = summaries.create_writer(out_dir, tensorboard=tensorboard)
  if writer is not None:
    writer.write_images(step, {name: figures.to_rgb(fig)[None] for name, fig in drawn.items()})
    writer.close()
  return paths


def evaluate_workdir(workdir: str, *, cells: str = "table1", step: int | None = None,
                     num_importance: int | None = None,
                     num_targets: int | None = None, seed: int | None = None,
                     batch_size: int | None = None, chunk_size: int | None = None,
                     dtype: str | None = None,
                     data_config: ml_collections.ConfigDict | None = None
                     ) -> list[vma_results.CellResult]:
  """Restores a checkpoint of a training run and evaluates it on the test split.

  Arguments left None take the run's `config.eval` values (K = 1000, all targets, seed 0).

  Args:
    workdir: the training run's workdir (with config.json and checkpoints/), or an exported
      model's folder (`vma_jax.pretrained`).
    cells: "C:T,R/T,..." (`cells.parse_cell`), a name of `results.GRIDS` ("table1",
      "large"), or "config" for the run's own config.eval.cells.
    step: the checkpoint to evaluate; default: the newest intact one (damaged ones are
      skipped, `checkpoints.restore_newest`).
    num_importance: K.
    num_targets: targets per cell, spread evenly over the classes; 0 = the whole test split
      (13,180).
    seed: fixes the episodes and samples of every cell.
    batch_size, chunk_size: targets and samples processed at once.
    dtype: the networks' computation dtype (default: the run's config.model.dtype); check a
      lower precision first with benchmarks/precision.py.
    data_config: overrides the run's config.data (e.g. another archive_dir).
  Returns:
    One vma_results.CellResult per cell; also written to workdir/eval/results.{json,csv,md}, or to
    workdir/eval_<dtype>/ for a dtype other than the run's (so that a lower-precision
    evaluation never replaces the run's own results). Each cell is recorded as it finishes
    (`results.FinishedCells`): the same call after an interruption evaluates only the cells
    left.
    With several processes, every one returns the results and process 0 writes the files.
  """
  params, step, run_config = checkpoints.restore_params(workdir, step)
  config = with_dtype(run_config, dtype)
  settings, split = settings_and_test_split(
      config, data_config, cells=cells, num_importance=num_importance, num_targets=num_targets,
      seed=seed, batch_size=batch_size, chunk_size=chunk_size)
  out_dir = os.path.join(workdir, "eval" if config.model.dtype == run_config.model.dtype
                         else f"eval_{config.model.dtype}")
  finished = vma_results.FinishedCells(out_dir, dict(
      params_sha256=checkpoints.tree_digest(params), step=int(step), dtype=config.model.dtype,
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
    vma_results.write_results(results, out_dir, meta)
    write_figures(results, out_dir, step=int(step), num_dummies=config.model.num_dummies,
                  tensorboard=config.train.get("tensorboard", True))
    finished.remove_if_within(results)
  return results
