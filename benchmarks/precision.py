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

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from vma_jax.cpu import host  # pylint: disable=g-import-not-at-top


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
  from vma_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from vma_jax import data  # pylint: disable=g-import-not-at-top
  from vma_jax import evaluate  # pylint: disable=g-import-not-at-top
  try:
    batch_size = args.batch_size or checkpoints.load_config(args.workdir).eval.batch_size
    host.use_cpu_cores([batch_size], args.cpu_devices)
    import jax  # pylint: disable=g-import-not-at-top
    gaps = evaluate.compare_precision(
        args.workdir, dtype=args.dtype, reference_dtype=args.reference_dtype,
        cells=args.cells or evaluate.GRID, num_importance=args.num_importance,
        num_targets=args.num_targets, seed=args.seed, batch_size=args.batch_size,
        chunk_size=args.chunk_size)
  except (checkpoints.CheckpointError, data.DataError, FloatingPointError, ValueError) as e:
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
