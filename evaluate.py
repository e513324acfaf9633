"""Evaluates a trained VMA on the Table 1 grid of few-shot bounds, or on larger memories.

    python evaluate.py --workdir=runs/default --num_importance=1000
    python evaluate.py --workdir=runs/default --cells=large   # memories of up to 1000 images

Writes workdir/eval/results.{json,csv,md} (earlier results there are kept as
results.<n>.*) and prints the Markdown table. Each cell is recorded as it finishes: after
an interruption, the same command evaluates only the cells left. With --dtype other than the
run's (e.g. bfloat16 on a GPU, after `benchmarks/precision.py` has shown the bounds move by
less than 0.1 nat), it writes workdir/eval_<dtype>/ instead.
"""

import sys

from absl import flags
from absl import logging

from vma_jax import cells as vma_cells
from vma_jax import checkpoints
from vma_jax import cli
from vma_jax import data
from vma_jax import distributed
from vma_jax import errors
from vma_jax import evaluate
from vma_jax import results as vma_results
from vma_jax.cpu import host

_WORKDIR = flags.DEFINE_string(
    "workdir", "runs/quick", "The training run to evaluate (default: the README's quick run).")
_NUM_IMPORTANCE = flags.DEFINE_integer(
    "num_importance", None, "K, importance samples (default: the run's config.eval, 1000).")
_CELLS = flags.DEFINE_string(
    "cells", "table1",
    "Cells, comma-separated: C:T (T images from at most C classes, as Table 1) or R/T (R "
    "images of the target's class among T, the others from any other class), e.g. "
    "'1:5,5/1000'; or 'table1' (the 14 cells of Table 1), 'large' (R = 1 and 5, T = 19 to "
    "1000) or 'config' (the run's config.eval.cells).")
_NUM_TARGETS = flags.DEFINE_integer(
    "num_targets", None,
    "Targets per cell; 0 = every test image, 13,180 (default: the run's config.eval).")
_STEP = flags.DEFINE_integer(
    "step", None, "The checkpoint to evaluate (default: the newest intact one; damaged ones "
    "are skipped and logged).")
_SEED = flags.DEFINE_integer("seed", None, "Fixes the episodes and samples (default 0).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Targets at once (default: config).")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", None, "Samples at once (default: config).")
_DTYPE = flags.DEFINE_enum(
    "dtype", None, evaluate.DTYPES,
    "The networks' computation dtype (default: the run's config.model.dtype).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "On a CPU-only host, the JAX devices to split it into (default: one "
    "per core, as many as divide the batch size); no effect on GPU or TPU.")
distributed.define_flags()


def main(argv):
  del argv  # every setting is a flag (cli.run refuses anything else)
  logging.set_verbosity(logging.INFO)
  # Mistakes in the command line, before anything is loaded.
  cells = _CELLS.value
  if cells != "config":
    try:
      vma_cells.parse_cells(vma_results.GRIDS.get(cells, cells))
    except ValueError as e:
      cli.exit_usage("evaluate.py", f"--cells={cells}: {e}")
  cli.require_workdir(_WORKDIR.value, "evaluate.py")
  if _STEP.value is not None:
    cli.require_step(_WORKDIR.value, _STEP.value, "evaluate.py")
  try:
    batch_size = _BATCH_SIZE.value or checkpoints.load_config(_WORKDIR.value).eval.batch_size
    # Before JAX starts: the targets are sharded over one CPU device per core.
    host.use_cpu_cores([batch_size], _CPU_DEVICES.value)
    # Also before JAX starts: joins the other processes of a run on several hosts, if any.
    distributed.initialize_from_flags()
  except ValueError as e:  # the devices or processes asked for
    cli.exit_usage("evaluate.py", str(e))
  except checkpoints.CheckpointError as e:
    cli.exit_error("evaluate.py", str(e))
  try:
    results = evaluate.evaluate_workdir(
        _WORKDIR.value, cells=_CELLS.value, step=_STEP.value, num_importance=_NUM_IMPORTANCE.value,
        num_targets=_NUM_TARGETS.value, seed=_SEED.value, batch_size=_BATCH_SIZE.value,
        chunk_size=_CHUNK_SIZE.value, dtype=_DTYPE.value)
  except errors.ConfigError as e:  # a setting that cannot run; any other error is a bug
    cli.exit_usage("evaluate.py", str(e))
  except (checkpoints.CheckpointError, data.DataError, FloatingPointError) as e:
    sys.exit(f"evaluate.py: {e}")
  print(vma_results.results_markdown(results))


if __name__ == "__main__":
  host.reexec_with_malloc_tunables()  # before anything allocates: see vma_jax/cpu/host.py
  cli.run(main, "evaluate.py")
