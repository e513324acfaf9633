"""Wall and CPU times of calls, warm-up (compilation included) excluded."""

import statistics
import time

import jax


def times(fn, *, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
  """Wall and process CPU seconds of `repeats` calls fn() after `warmup` untimed ones.

  fn must wait for its own results (jax.block_until_ready) for the times to mean anything.
  """
  for _ in range(warmup):
    fn()
  wall, cpu = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - cpu_start)
  return wall, cpu


def median_s(fn, *args, repeats: int) -> float:
  """Median seconds of `repeats` calls fn(*args), each until its results are ready."""
  wall, _ = times(lambda: jax.block_until_ready(fn(*args)), warmup=1, repeats=repeats)
  return statistics.median(wall)
