"""Stopping on SIGTERM or SIGINT: the step in flight finishes, its checkpoint is saved, and
the run resumes bit-identically; periodic jobs compile once.

Runs on mock data with the shrunken config of tests/helpers.py, signals sent to this process.
"""

import logging
import os
import re
import signal

import jax
import pytest

from helpers import assert_params_equal, mock_splits, small_config
from vma_jax import checkpoints
from vma_jax import preemption
from vma_jax import train
from vma_jax import validation


def test_a_first_signal_asks_to_stop_and_a_second_ctrl_c_stops_at_once():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.StopRequest() as stop:
    assert not stop.requested(0)
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested(1) and stop.signal == signal.SIGINT and stop.exit_status == 130
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
  with preemption.StopRequest() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
    assert stop.requested(1) and stop.exit_status == 143


@pytest.mark.slow
def test_sigterm_mid_run_saves_the_step_in_flight_and_resumes_bit_identically(
    tmp_path, monkeypatch):
  splits = mock_splits()
  # Checkpoints only at the end: the one at step 2 can only come from the signal.
  config = small_config(train__num_steps=4, train__checkpoint_every=100, train__log_every=3)
  straight = train.train_and_evaluate(config, str(tmp_path / "straight"), splits=splits)

  batches = train._batches  # pylint: disable=protected-access

  def signal_during_step_2(*args):
    for i, batch in enumerate(batches(*args)):
      if i == 1:
        os.kill(os.getpid(), signal.SIGTERM)
      yield batch

  monkeypatch.setattr(train, "_batches", signal_during_step_2)
  workdir = tmp_path / "stopped"
  with pytest.raises(preemption.Stopped, match="SIGTERM at step 2 of 4") as stopped:
    train.train_and_evaluate(config, str(workdir), splits=splits)
  assert stopped.value.step == 2 and stopped.value.exit_status == 143
  assert checkpoints.saved_steps(str(workdir)) == [2]
  # The metrics of steps 1-2, logged before stopping although log_every is 3.
  assert "step" in (workdir / train.METRICS_FILE).read_text()
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

  monkeypatch.undo()
  resumed = train.train_and_evaluate(config, str(workdir), splits=splits)
  assert int(resumed.step) == 4
  assert_params_equal(straight.params, resumed.params)


@pytest.mark.slow
def test_validation_and_images_compile_once(tmp_path, monkeypatch):
  """After the first round of periodic jobs nothing is compiled again: not the validation
  (two padded batches), the image grid, the step, the sampler or the host's logging. The step
  is traced once: its first call reuses the trace that checked the config."""
  runs, rounds, late_compiles, step_traces = [], [], [], []
  prepare = train._prepare_run  # pylint: disable=protected-access
  write_images = validation.Validation.write_images

  def prepare_and_keep(*args, **kwargs):
    runs.append(prepare(*args, **kwargs))
    return runs[-1]

  def write_images_and_count(*args, **kwargs):  # the last job of a step
    write_images(*args, **kwargs)
    rounds.append(args[-1])

  class Compiles(logging.Handler):
    def emit(self, record):
      if re.match(r"Finished tracing\b.*\btrain_step\b", record.getMessage()):
        step_traces.append(record.getMessage())
      if rounds and record.getMessage().startswith("Compiling "):
        late_compiles.append(record.getMessage()[:200])

  monkeypatch.setattr(train, "_prepare_run", prepare_and_keep)
  monkeypatch.setattr(validation.Validation, "write_images", write_images_and_count)
  handler, jax_logger = Compiles(), logging.getLogger("jax")
  jax_logger.addHandler(handler)
  config = small_config(train__num_steps=4, train__validate_every=1, train__image_every=1,
                        validation__num_targets=6, validation__batch_size=4)
  workdir = tmp_path / "run"
  try:
    with jax.log_compiles(True):
      train.train_and_evaluate(config, str(workdir), splits=mock_splits())
  finally:
    jax_logger.removeHandler(handler)
  assert rounds == [1, 2, 3, 4]
  assert not late_compiles, late_compiles
  assert len(step_traces) == 1, step_traces
  (run,) = runs
  for fn in (run.sample, run.train_step, run.validation.bound_fn, run.validation.images_fn):
    assert fn._cache_size() == 1, fn  # pylint: disable=protected-access
  assert len(list((workdir / train.IMAGE_DIR).glob("few_shot_*.png"))) == 4
