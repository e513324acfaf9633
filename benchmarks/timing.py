"""The median wall time of a jitted call, after one untimed call (compilation, warm-up)."""

import statistics
import time

import jax


def median_s(fn, *args, repeats: int) -> float:
  """Median seconds of `repeats` calls fn(*args), each until its results are ready."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)
