"""Episode sampling throughput: batches per second of the jitted samplers.

    python benchmarks/episodes_bench.py                     # prints JSON
    python benchmarks/episodes_bench.py --out episodes.json
    python benchmarks/episodes_bench.py --data synthetic    # without the prepared data

Benchmarks (each on the Omniglot train split as device arrays, 964 classes x 20 images):
  train_recipe   sample_train_episodes, B=256 episodes, T=32, 4 per class (the recipe)
  cell_c2_t19    sample_cell_train_episodes, B=256, C=2, T=19

Each sampler is compiled and called `--warmup` times untimed; then each of `--repeats`
repeats draws `--batches` batches (keys fold_in(key, step), dispatched back to back, one
block at the end, as a training loop would) and the entry reports the median, min and max
wall time per batch and the median batches per second. `--data synthetic` uses random
images of the same shapes (the sampler's cost does not depend on the pixels).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from vma_jax import data as data_lib  # pylint: disable=g-import-not-at-top
from vma_jax import episodes  # pylint: disable=g-import-not-at-top


def _split(kind: str, image_size: int) -> data_lib.OmniglotSplit:
  if kind == "omniglot":
    return data_lib.load_omniglot("train", image_size=image_size)
  rng = np.random.default_rng(0)
  labels_N = np.repeat(np.arange(964), 20).astype(np.int32)
  images_NxHxW = (rng.random((labels_N.size, image_size, image_size)) < 0.1).astype(np.uint8)
  return data_lib.OmniglotSplit(images_NxHxW, labels_N, np.zeros_like(labels_N))


def _time(sample, key, batches: int, warmup: int, repeats: int) -> list[float]:
  for i in range(warmup):
    jax.block_until_ready(sample(jax.random.fold_in(key, i)))
  per_batch_s = []
  for r in range(repeats):
    start = time.perf_counter()
    out = [sample(jax.random.fold_in(key, 1000 * (r + 1) + i)) for i in range(batches)]
    jax.block_until_ready(out)
    per_batch_s.append((time.perf_counter() - start) / batches)
  return per_batch_s


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="")
  parser.add_argument("--data", choices=("omniglot", "synthetic"), default="omniglot")
  parser.add_argument("--image_size", type=int, default=26)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  try:
    split = _split(args.data, args.image_size)
  except data_lib.DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  data = episodes.EpisodeData.from_split(split)
  key = jax.random.key(0)
  samplers = {
      "train_recipe": (
          dict(batch=args.batch, memory=32, per_class=4),
          lambda k: episodes.sample_train_episodes(
              data, k, batch_size=args.batch, memory_size=32, per_class=4),
      ),
      "cell_c2_t19": (
          dict(batch=args.batch, memory=19, max_classes=2),
          lambda k: episodes.sample_cell_train_episodes(
              data, k, batch_size=args.batch, max_classes=2, memory_size=19),
      ),
  }
  results = []
  for name, (sizes, sample) in samplers.items():
    times = _time(jax.jit(sample), key, args.batches, args.warmup, args.repeats)
    median = statistics.median(times)
    results.append(dict(
        name=name,
        **sizes,
        data=args.data,
        image_size=args.image_size,
        median_s=median,
        min_s=min(times),
        max_s=max(times),
        batches_per_s=1.0 / median,
        episodes_per_s=args.batch / median,
        device=str(jax.devices()[0].device_kind),
        cpu_count=os.cpu_count(),
        load_average_1min=os.getloadavg()[0],
        machine=platform.machine(),
        jax=jax.__version__,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    ))
  text = json.dumps(results, indent=1)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
