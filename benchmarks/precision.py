"""Measures how far a lower computation precision moves the bounds of a trained checkpoint.

    python benchmarks/precision.py --workdir=runs/default --dtype=bfloat16 \
        --num_targets=1024 --out precision.json

For each cell, the latest checkpoint of the run is evaluated twice on the same test episodes
and sample keys: once with the networks computing in float32 and once in --dtype (parameters,
log-densities and log-weights stay float32 in both). The entry of a cell holds both bounds
(-L_K, nats), their paired difference `gap` with its standard error, the largest difference of
one target, and each dtype's seconds (compilation included). The script exits with status 1
if some cell's |gap| is not below --tolerance (default 0.1 nat: the most that a reported bound
may move with the precision, docs/performance.md); if none is, `evaluate.py --dtype` evaluates
the full grid in that precision.
"""

import argparse
import dataclasses
import json
import os
import sys
from typing import Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top
from absl import logging
import ml_collections
import numpy as np

from vma_jax import cells as vma_cells
from vma_jax import checkpoints
from vma_jax import data
from vma_jax import errors
from vma_jax import evaluate
from vma_jax import model as vma_model
from vma_jax import results
from vma_jax.cpu import host


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


def precision_gaps(config, params, split, grid: Sequence[vma_cells.Cell], *, dtype: str,
                   reference_dtype: str = "float32", num_importance: int, num_targets: int,
                   batch_size: int, chunk_size: int, seed: int) -> list[PrecisionGap]:
  """Each cell's -L_K with the networks computing in `dtype` and in `reference_dtype`.

  Both use the same parameters, episodes and sample keys (they depend only on the seed, the
  cell and the target), so the per-target differences are paired: they measure the effect of
  the precision alone. Each dtype's seconds include compiling its bound function.
  """
  if dtype == reference_dtype:
    raise errors.ConfigError(f"compare two different dtypes, got {dtype!r} twice")
  mesh, data, targets = vma_cells.on_devices(split, num_targets)
  models = {d: vma_model.make_model(evaluate.with_dtype(config, d))
            for d in (reference_dtype, dtype)}
  gaps = []
  for cell in grid:
    neg_bounds, seconds = {}, {}
    for d, dtype_model in models.items():
      values, seconds[d] = vma_cells.evaluate_targets(
          dtype_model, params, data, cell, num_importance=num_importance, targets=targets, batch_size=batch_size,
          chunk_size=chunk_size, seed=seed, mesh=mesh)
      neg_bounds[d] = values["neg_bound"]
    gap_N = neg_bounds[dtype] - neg_bounds[reference_dtype]
    gap, gap_stderr = vma_cells.mean_and_stderr(gap_N)
    gaps.append(PrecisionGap(
        cell.max_classes, cell.memory_size, reference_dtype, dtype,
        reference_bound=float(neg_bounds[reference_dtype].mean()),
        bound=float(neg_bounds[dtype].mean()), gap=gap, gap_stderr=gap_stderr,
        max_abs_target_gap=float(np.abs(gap_N).max()),
        reference_seconds=seconds[reference_dtype], seconds=seconds[dtype],
        num_importance=num_importance, num_targets=len(gap_N)))
    logging.info("cell %s  -L_%d: %s %.3f, %s %.3f, gap %+.3f +- %.3f nats", cell,
                 num_importance, reference_dtype, gaps[-1].reference_bound,
                 dtype, gaps[-1].bound, gap, gap_stderr)
  return gaps


def compare_precision(workdir: str, *, dtype: str = "bfloat16",
                      reference_dtype: str = "float32", cells: str = results.GRID,
                      num_importance: int | None = None, num_targets: int | None = None,
                      seed: int | None = None, batch_size: int | None = None,
                      chunk_size: int | None = None,
                      data_config: ml_collections.ConfigDict | None = None
                      ) -> list[PrecisionGap]:
  """`precision_gaps` of the latest checkpoint of a training run, on the test split.

  Arguments left None take the run's `config.eval` values, as in
  `evaluate.evaluate_workdir`. Nothing is written to the workdir.
  """
  params, _, config = checkpoints.restore_params(workdir)
  for d in (dtype, reference_dtype):
    evaluate.with_dtype(config, d)  # a clear error for an unknown dtype, before any data
  settings, split = evaluate.settings_and_test_split(
      config, data_config, cells=cells, num_importance=num_importance, num_targets=num_targets,
      seed=seed, batch_size=batch_size, chunk_size=chunk_size)
  grid = settings.pop("cells")
  return precision_gaps(config, params, split, grid, dtype=dtype,
                        reference_dtype=reference_dtype, **settings)


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="the training run to measure")
  parser.add_argument("--dtype", default="bfloat16", help="the precision to measure")
  parser.add_argument("--reference_dtype", default="float32")
  parser.add_argument("--cells", default=None, help="C:T,... (default: the Table 1 grid)")
  parser.add_argument("--num_importance", type=int, default=None, help="K (default: config)")
  parser.add_argument("--num_targets", type=int, default=1024,
                      help="targets per cell, spread over the test classes; 0 = all")
  parser.add_argument("--seed", type=int, default=None)
  parser.add_argument("--batch_size", type=int, default=None)
  parser.add_argument("--chunk_size", type=int, default=None)
  parser.add_argument("--tolerance", type=float, default=0.1, help="nats")
  parser.add_argument("--cpu_devices", type=int, default=None,
                      help="on a CPU-only host, the JAX devices to split it into")
  parser.add_argument("--out", default=None, help="write the entries to this JSON file")
  return parser.parse_args(argv)


def main(argv=None):
  args = _parse(argv)
  try:
    batch_size = args.batch_size or checkpoints.load_config(args.workdir).eval.batch_size
    host.use_cpu_cores([batch_size], args.cpu_devices)
  except (checkpoints.CheckpointError, ValueError) as e:  # ValueError: the devices asked for
    sys.exit(f"precision.py: {e}")
  try:
    import jax  # pylint: disable=g-import-not-at-top
    gaps = compare_precision(
        args.workdir, dtype=args.dtype, reference_dtype=args.reference_dtype,
        cells=args.cells or results.GRID, num_importance=args.num_importance,
        num_targets=args.num_targets, seed=args.seed, batch_size=args.batch_size,
        chunk_size=args.chunk_size)
  # A setting that cannot run ends in one line; any other error is a bug (its traceback).
  except (checkpoints.CheckpointError, data.DataError, errors.ConfigError,
          FloatingPointError) as e:
    sys.exit(f"precision.py: {e}")
  entries = [dict(dataclasses.asdict(g), device=str(jax.devices()[0].device_kind),
                  num_devices=jax.device_count()) for g in gaps]
  print(f"| C | T | {args.reference_dtype} | {args.dtype} | gap | ± | max target gap | "
        f"s {args.reference_dtype} | s {args.dtype} |")
  print("|---|---|---|---|---|---|---|---|---|")
  for g in gaps:
    print(f"| {g.max_classes} | {g.memory_size} | {g.reference_bound:.3f} | {g.bound:.3f} | "
          f"{g.gap:+.3f} | {g.gap_stderr:.3f} | {g.max_abs_target_gap:.3f} | "
          f"{g.reference_seconds:.1f} | {g.seconds:.1f} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(entries, f, indent=2)
  worst = max(abs(g.gap) for g in gaps)
  within = worst < args.tolerance
  print(f"largest |gap| {worst:.3f} nats: {'within' if within else 'NOT within'} "
        f"{args.tolerance} nat")
  return 0 if within else 1


if __name__ == "__main__":
  host.reexec_with_malloc_tunables()
  sys.exit(main())
