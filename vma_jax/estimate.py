"""How long a run's phases should take on this runtime, from the measured time of first steps.

`training` runs the config's own jitted train step (sampler included) on every device for a
few steps after its compiling call, and scales the mean step time to the steps still to run.
`evaluation` runs one cell function of the grid's smallest and of its largest memory for a
few batches at the evaluation's K; a cell's time per target is taken as linear in T between
the two (the K decodes cost the same at every T, the encoders grow with T), and each cell
adds one compile. Validation and image summaries during training are left out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, Sequence

import jax
import numpy as np

from vma_jax import cells as vma_cells
from vma_jax import episodes as episodes_lib
from vma_jax import model as vma_model
from vma_jax import sharding
from vma_jax import state as state_lib
from vma_jax import train


@dataclasses.dataclass(frozen=True)
class Phase:
  """A phase of `units` (steps or targets), measured at `seconds_per_unit` after a compile
  of `compile_seconds` (the first call, compiling and running it)."""

  name: str
  units: int
  unit: str
  seconds_per_unit: float
  compile_seconds: float

  @property
  def seconds(self) -> float:
    return self.compile_seconds + self.units * self.seconds_per_unit


def _first_and_mean(call: Callable[[], object], repeats: int) -> tuple[float, float]:
  """Seconds of the first call (compiling) and the mean of `repeats` calls after it.

  The calls after the first are dispatched back to back and waited for once, as the training
  loop runs them, so the mean is the loop's rate (benchmarks/ times each call alone).
  """
  start = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(repeats):
    result = call()
  jax.block_until_ready(result)
  return first, (time.perf_counter() - start) / repeats


def training(config, train_split, *, steps: int = 10, done: int = 0) -> Phase:
  """The train steps of `config` left after `done`, timed on `steps` steps after the first.

  The steps are taken on a fresh state, at config.train.batch_size on every device, with
  nothing written anywhere.
  """
  if steps < 1:
    raise ValueError(f"steps={steps}: time at least one step")
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.train.batch_size, mesh, "config.train.batch_size")
  model = vma_model.make_model(config)
  sample = train.make_episode_sampler(config, mesh)
  train_step = train.make_train_step(config, model, mesh)
  data = episodes_lib.device_data(train_split, mesh)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  state = state_lib.init_train_state(config, init_key, mesh)
  step = 0

  def one_step():
    nonlocal state, step
    episodes, sample_key = sample(data, train_key, step)
    state, metrics = train_step(state, episodes, sample_key)
    step += 1
    return metrics

  first, mean = _first_and_mean(one_step, steps)
  left = max(config.train.num_steps - done, 0)
  return Phase(f"training, steps {done}-{config.train.num_steps}", left, "step", mean,
               first - mean)


def evaluation(config, test_split, cells: Sequence[vma_cells.Cell], *, num_importance: int,
               num_targets: int, batch_size: int, chunk_size: int,
               batches: int = 2) -> list[Phase]:
  """One Phase per cell of `cells` at K = num_importance on num_targets targets (0: all),
  from `batches` timed batches of the smallest and of the largest memory among them."""
  if not cells:
    return []
  mesh = sharding.make_mesh()
  sharding.check_batch_size(batch_size, mesh)
  model = vma_model.make_model(config)
  data = episodes_lib.device_data(test_split, mesh)
  targets_N = episodes_lib.target_indices(len(test_split.labels_N), num_targets)
  params = vma_model.init_params(config, jax.random.key(0))  # the time does not depend on them
  key = jax.random.key(0)
  per_target, compile_s = {}, []
  for cell in (min(cells, key=lambda c: c.memory_size), max(cells, key=lambda c: c.memory_size)):
    if cell.memory_size in per_target:
      continue
    size = vma_cells.targets_per_batch(batch_size, cell.memory_size, mesh.size)
    cell_fn = vma_cells.make_cell_fn(model, cell, num_importance=num_importance,
                                     chunk_size=chunk_size, mesh=mesh)
    target_index_B = sharding.shard_batch(np.resize(targets_N, size).astype(np.int32), mesh)
    first, mean = _first_and_mean(lambda: cell_fn(params, data, key, target_index_B), batches)
    per_target[cell.memory_size] = mean / size
    compile_s.append(first - mean)
  (t_low, s_low), (t_high, s_high) = min(per_target.items()), max(per_target.items())
  slope = 0.0 if t_high == t_low else (s_high - s_low) / (t_high - t_low)
  return [Phase(f"evaluation, cell {cell}", len(targets_N), "target",
                s_low + slope * (cell.memory_size - t_low), float(np.mean(compile_s)))
          for cell in cells]


def duration(seconds: float) -> str:
  """`seconds` as people say it: 42 s, 3 min 20 s, 5 h 10 min, 2 d 3 h."""
  if not math.isfinite(seconds):
    return "–"
  seconds = round(seconds)
  if seconds < 60:
    return f"{seconds} s"
  minutes, s = divmod(seconds, 60)
  if minutes < 60:
    return f"{minutes} min {s} s" if minutes < 10 else f"{minutes} min"
  hours, minutes = divmod(minutes, 60)
  if hours < 24:
    return f"{hours} h {minutes} min"
  days, hours = divmod(hours, 24)
  return f"{days} d {hours} h"


def markdown(phases: Sequence[Phase]) -> str:
  """A Markdown table of the phases and their total."""
  device = jax.devices()[0]
  lines = [f"On {jax.device_count()} x {device.device_kind} ({device.platform}):", "",
           "| phase | measured | to run | compile | time |", "|---|---|---|---|---|"]
  for p in phases:
    rate = (f"{p.seconds_per_unit * 1e3:.1f} ms per {p.unit}" if p.seconds_per_unit < 1
            else f"{p.seconds_per_unit:.2f} s per {p.unit}")
    lines.append(f"| {p.name} | {rate} | {p.units:,} {p.unit}s | "
                 f"{duration(p.compile_seconds)} | {duration(p.seconds)} |")
  lines.append(f"| **all** | | | | **{duration(sum(p.seconds for p in phases))}** |")
  return "\n".join(lines) + "\n"
