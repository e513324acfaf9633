"""Phase-time estimates: measured steps scaled to what is left, interpolated over T."""

import numpy as np
import pytest

from helpers import small_config
from vma_jax import cells as vma_cells
from vma_jax import estimate


def _split(num_classes=12, per_class=20, seed=0):
  from vma_jax import data  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  labels_N = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  images_NxHxW = (rng.random((len(labels_N), 26, 26)) < 0.2).astype(np.uint8)
  return data.OmniglotSplit(images_NxHxW=images_NxHxW, labels_N=labels_N,
                            alphabets_N=np.zeros_like(labels_N))


def test_duration_reads_as_people_say_it():
  assert [estimate.duration(s) for s in (0.4, 42, 200, 1300, 5 * 3600 + 600, 51 * 3600)] == [
      "0 s", "42 s", "3 min 20 s", "21 min", "5 h 10 min", "2 d 3 h"]
  assert estimate.duration(float("nan")) == "–"


def test_training_counts_the_steps_left_at_the_measured_rate():
  config = small_config(train__num_steps=50)
  phase = estimate.training(config, _split(), steps=2, done=20)
  assert (phase.units, phase.unit) == (30, "step")
  assert phase.seconds_per_unit > 0 and phase.compile_seconds > 0
  assert phase.seconds == pytest.approx(phase.compile_seconds + 30 * phase.seconds_per_unit)
  with pytest.raises(ValueError, match="at least one step"):
    estimate.training(config, _split(), steps=0)


def test_evaluation_interpolates_the_time_per_target_linearly_in_T():
  config = small_config()
  grid = vma_cells.parse_cells("1:1,2:3,1:5,2:2")
  phases = estimate.evaluation(config, _split(), grid, num_importance=3, num_targets=10,
                               batch_size=4, chunk_size=3, batches=1)
  assert [p.name for p in phases] == [f"evaluation, cell {c}" for c in grid]
  assert all(p.units == 10 and p.unit == "target" for p in phases)
  by_t = {c.memory_size: p.seconds_per_unit for c, p in zip(grid, phases)}
  assert by_t[3] == pytest.approx((by_t[1] + by_t[5]) / 2)
  assert by_t[2] == pytest.approx(by_t[1] + (by_t[5] - by_t[1]) / 4)
  assert len({p.compile_seconds for p in phases}) == 1
  table = estimate.markdown(phases)
  assert table.count("| evaluation, cell ") == 4 and "10 targets" in table
  total = estimate.duration(sum(p.seconds for p in phases))
  assert f"| **all** | | | | **{total}** |" in table
  assert estimate.evaluation(config, _split(), [], num_importance=3, num_targets=10,
                             batch_size=4, chunk_size=3) == []
