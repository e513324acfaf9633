"""Stopping a run cleanly when asked to: SIGTERM (spot and preemptible VMs, `timeout`, batch
schedulers) or SIGINT (Ctrl-C, a notebook's interrupt).

The training loop asks `StopRequest.requested(step)` after each step; once a signal has come,
it saves the step's checkpoint and returns, so the same command resumes from there. A second
SIGINT stops at once (KeyboardInterrupt), as without this.

With several processes the signal may reach only some of them, and all must stop at the same
step (each writes its part of the checkpoint): there JAX's coordination service, which
`jax.distributed.initialize` starts listening for SIGTERM, decides the step
(`multihost_utils.reached_preemption_sync_point`), and no handler of ours is installed.
"""

from __future__ import annotations

import signal
import threading

from absl import logging
import jax
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
  """A context in which SIGTERM and SIGINT ask the loop to stop instead of killing it.

  Handlers are installed on entering (from the main thread only: Python delivers signals
  there) and the previous ones restored on leaving.
  """

  def __init__(self):
    self.signal: int | None = None  # the first signal received
    self._previous = {}

  def __enter__(self) -> StopRequest:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self.signal is not None and signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt
    if self.signal is None:
      self.signal = signum
      logging.warning("%s received: stopping after the step in flight, once its checkpoint "
                      "is saved%s.", signal.Signals(signum).name,
                      " (Ctrl-C again stops at once)" if signum == signal.SIGINT else "")

  def requested(self, step: int) -> bool:
    """Whether the run should stop after `step` (the same answer on every process)."""
    if jax.process_count() > 1:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signal = signal.SIGTERM
        return True
      return False
    return self.signal is not None

  @property
  def exit_status(self) -> int:
    """The shell's status of a process ended by the signal: 128 + its number."""
    return 128 + (self.signal or signal.SIGTERM)

  def stopped(self, step: int, num_steps: int, checkpoint_dir: str) -> Stopped:
    """The Stopped error of a run that stopped after `step`, its checkpoint saved."""
    return Stopped(
        f"stopped by {signal.Signals(self.signal or signal.SIGTERM).name} at step {step} of "
        f"{num_steps}, its checkpoint saved in {checkpoint_dir}; the same command resumes "
        "from it.", step=step, exit_status=self.exit_status)


class Stopped(Exception):
  """Training stopped early on a signal (SIGTERM, SIGINT) after saving the checkpoint of
  `step`; running the same command again resumes from it. `exit_status`: 128 + signal."""

  def __init__(self, message: str, *, step: int, exit_status: int):
    super().__init__(message)
    self.step, self.exit_status = step, exit_status
