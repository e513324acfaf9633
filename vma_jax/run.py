"""A training run's workdir, held by one object from start to end: `Run`.

    with Run(workdir, config) as run:        # checked writable; locked if it exists
      ...                                    # build and trace: nothing written yet
      restored = run.restore(targets)        # the newest intact checkpoint, or None
      run.scalars(step, {...})               # metrics.jsonl and TensorBoard
      run.figure(step, "few_shot", fig)      # images/few_shot_<step>.png and TensorBoard
      run.save(step, params, opt_state)      # asynchronous; `wait` completes it
    # closed: the save in flight completed, the summaries flushed, the lock released

What goes wrong is said in one line (`WorkdirError`, `checkpoints.CheckpointError`): a
workdir that cannot be written, one in use by another run (its lock, train.lock, names the
holder; the kernel drops a lock when its holder dies, however it dies), a config that cannot
continue the checkpoint, a write that fails (what, at which step, why, and the last good
checkpoint). Orbax's log lines are filtered while a Run is open (`checkpoints.orbax_logs`).
With several processes (`vma_jax.distributed`) process 0 alone holds the lock and writes the
config, metrics and figures; every process saves and restores the checkpoints, and all stop
together when process 0 cannot use the workdir.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from typing import Any, Callable

from absl import logging
from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import numpy as np

from vma_jax import checkpoints
from vma_jax import distributed
from vma_jax import errors
from vma_jax import figures
from vma_jax import summaries

LOCK_FILE = "train.lock"
METRICS_FILE = "metrics.jsonl"
IMAGE_DIR = "images"
_PROBE_BYTES = 1 << 16  # a probe of this size fails on a full disk, not only a read-only one


class WorkdirError(RuntimeError):
  """The workdir cannot be used: not writable, in use by another run, or a write failed."""


class Run:
  """A training run's hold on `workdir` for `config` (a context manager).

  Entering checks that the workdir can be written and locks it if it exists; `restore` makes
  it (locked) and writes config.json; leaving completes the save in flight, flushes the
  summaries and releases the lock. `allow_config_change`: resume a checkpoint whose config
  trains otherwise (fields outside `checkpoints.FREE_FIELDS`), recorded in
  config_history.jsonl; without it such a resume raises `checkpoints.ConfigChangedError`.
  """

  def __init__(self, workdir: str, config, *, allow_config_change: bool = False):
    self.workdir, self.config = os.path.abspath(workdir), config
    self.allow_config_change = allow_config_change
    self.is_chief = distributed.is_chief()
    self.lock = WorkdirLock(self.workdir)
    self.manager = self.writer = self.metrics = None
    self.saving = None  # the step of a save that may still be in flight
    self._closing = contextlib.ExitStack()  # what leaving undoes, last first

  def __enter__(self) -> Run:
    with contextlib.ExitStack() as closing:
      closing.enter_context(checkpoints.orbax_logs())
      closing.callback(self.lock.release)
      self._on_chief(self._check_and_lock_if_there)
      self._closing = closing.pop_all()
    return self

  def __exit__(self, *exc_info) -> None:
    self._closing.close()

  @property
  def last_checkpoint(self) -> int | None:
    """The step of the newest checkpoint saved (its save may still be completing)."""
    return self.saving if self.saving is not None else self._last_complete()

  def _last_complete(self) -> int | None:
    return max(checkpoints.saved_steps(self.workdir), default=None)

  def _check_and_lock_if_there(self) -> None:
    check_writable(self.workdir)
    if os.path.isdir(self.workdir):
      self.lock.acquire()

  def _on_chief(self, action: Callable[[], None]) -> None:
    """Runs `action` on process 0 alone; if it raises WorkdirError, every process stops:
    process 0 with that error, the others saying why."""
    error = None
    if self.is_chief:
      try:
        action()
      except WorkdirError as e:
        error = e
    if jax.process_count() > 1:
      if multihost_utils.broadcast_one_to_all(np.int32(error is not None)) and error is None:
        raise WorkdirError(f"process 0 cannot use {self.workdir} (its log says why); this "
                           "process stops too.")
    if error is not None:
      raise error

  def restore(self, targets: dict, check: Callable[[Any, str], None] | None = None
              ) -> checkpoints.Restored | None:
    """The newest checkpoint this config can continue, restored onto `targets` ({item:
    abstract pytree with shardings}); None for a fresh run. The first call that writes.

    A checkpoint of another model (`checkpoints.check_compatible`), one that `check(saved
    config, source)` refuses, or one that trains otherwise (unless allow_config_change)
    raises CheckpointError and leaves the workdir as it was. Damaged checkpoints newer than
    the one restored are moved to damaged_checkpoints/ (one log line each) and trained again.
    Then config.json is written (the fields changed since the checkpoint's config recorded in
    config_history.jsonl) and the summary writers are opened.
    """
    self._on_chief(self.lock.acquire)  # a new workdir is made (and locked) only now
    self.manager = checkpoints.make_manager(self.workdir,
                                            max_to_keep=self.config.train.max_checkpoints)
    self._closing.callback(self._close_manager)

    def continuable(saved_config, source):
      differences = checkpoints.check_compatible(saved_config, self.config, source=source)
      if check is not None:
        check(saved_config, source)
      if differences and not self.allow_config_change:
        checkpoints.check_unchanged(saved_config, self.config, source=source)

    restored = checkpoints.restore_newest(self.manager, lambda _: targets,
                                          check_config=continuable)
    if restored is not None:
      for error in restored.damaged:
        moved = self._move_aside(error.step) if self.is_chief else checkpoints.DAMAGED_DIR
        logging.warning("%s", checkpoints.describe_damage(error, self.manager.directory,
                                                          now=f"moved to {moved}"))
      if restored.damaged:
        if jax.process_count() > 1:
          multihost_utils.sync_global_devices("damaged checkpoints moved aside")
        self.manager.reload()
      logging.info("Resumed from step %d of %s", restored.step, self.manager.directory)
    self._save_config(restored)
    self.writer = summaries.create_writer(self.workdir, tensorboard=self.config.train.tensorboard,
                                          just_logging=not self.is_chief)
    self.metrics = summaries.MetricsLog(os.path.join(self.workdir, METRICS_FILE))
    if self.writer is not None:
      self._closing.callback(self.writer.flush)
      if restored is None:
        self.writer.write_hparams(
            traverse_util.flatten_dict(checkpoints.to_dict(self.config), sep="."))
    return restored

  def _close_manager(self) -> None:
    """Completes the save in flight and closes Orbax's manager; a failure here (already
    reported, or of a run that stopped for another reason) is logged, not raised."""
    try:
      self.manager.close()
      if self.saving is not None and self.is_chief:
        checkpoints.record_files(self.manager, self.saving)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("The last checkpoint could not be completed: %s",
                      errors.one_line(e)[:300])

  def _move_aside(self, step: int) -> str:
    """Moves the checkpoint at `step` to damaged_checkpoints/<step>[.<n>] (never over an
    earlier one); returns where it went."""
    folder = os.path.join(self.workdir, checkpoints.DAMAGED_DIR)
    os.makedirs(folder, exist_ok=True)
    target, n = os.path.join(folder, str(step)), 0
    while os.path.exists(target):
      n += 1
      target = os.path.join(folder, f"{step}.{n}")
    os.replace(os.path.join(checkpoints.checkpoint_dir(self.workdir), str(step)), target)
    return target

  def _save_config(self, restored: checkpoints.Restored | None) -> None:
    """config.json by process 0, once every process has checked that it takes this config
    (so that all stop together where it does not); the changes from the resumed checkpoint's
    config in config_history.jsonl."""
    path = os.path.join(self.workdir, checkpoints.CONFIG_FILE)
    if jax.process_count() > 1:
      if os.path.exists(path):
        checkpoints.check_compatible(checkpoints.load_config(self.workdir), self.config,
                                     source=path)
      multihost_utils.sync_global_devices("config.json checked")  # before process 0 writes
    if not self.is_chief:
      return
    checkpoints.save_config(self.workdir, self.config)
    if restored is not None:
      record = checkpoints.record_config_change(self.workdir, restored.step, restored.config,
                                                self.config)
      if record:
        logging.warning("Resuming step %d with a changed config (recorded in %s): %s",
                        restored.step, checkpoints.CONFIG_HISTORY_FILE,
                        checkpoints.describe_differences(restored.config, self.config,
                                                         list(record["changed"])))

  def save(self, step: int, params, opt_state) -> None:
    """Starts an asynchronous save of the checkpoint at `step`, once the previous one is
    complete. WorkdirError if a save fails or the disk has no room for it: the last good
    checkpoint stays as it was (Orbax writes into a temporary folder, and removes older
    checkpoints only once a newer one is complete)."""
    self.wait()
    needed = sum(x.nbytes for x in jax.tree.leaves((params, opt_state)))
    directory = checkpoints.checkpoint_dir(self.workdir)
    free = shutil.disk_usage(directory).free
    if free < needed:  # refused before Orbax starts writing what could not be finished
      raise self._failed(OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (the checkpoint "
                                 f"needs {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are "
                                 "free)", os.path.join(directory, str(step))),
                         "the checkpoint", step)
    try:
      checkpoints.save(self.manager, step, params, opt_state, self.config)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(e, "the checkpoint", step) from e
    self.saving = step

  def wait(self) -> None:
    """Completes the save in flight and records its files' digests
    (`checkpoints.record_files`); WorkdirError if either failed."""
    if self.saving is not None:
      try:
        self.manager.wait_until_finished()
        if self.is_chief:
          checkpoints.record_files(self.manager, self.saving)
      except Exception as e:  # pylint: disable=broad-except
        raise self._failed(e, "the checkpoint", self.saving) from e
      self.saving = None

  def scalars(self, step: int, scalars: dict[str, float]) -> None:
    """Writes scalars of `step` to metrics.jsonl and TensorBoard."""
    with self._writing(step):
      if self.writer is not None:
        self.writer.write_scalars(step, scalars)
      if self.is_chief:
        self.metrics.write(step, scalars)

  def figure(self, step: int, name: str, fig) -> None:
    """Writes a matplotlib figure as images/<name>_<step>.png and an image summary."""
    with self._writing(step):
      if self.writer is not None:
        self.writer.write_images(step, {name: figures.to_rgb(fig)[None]})
      if self.is_chief:
        figures.write_png(fig, os.path.join(self.workdir, IMAGE_DIR, f"{name}_{step:08d}.png"))

  @contextlib.contextmanager
  def _writing(self, step: int):
    try:
      yield
    except OSError as e:
      raise self._failed(e, "the run's metrics and images", step) from e

  def _failed(self, error: BaseException, what: str, step: int) -> WorkdirError:
    # A checkpoint's write error may not name a file (a failed asynchronous write).
    path = (os.path.join(checkpoints.checkpoint_dir(self.workdir), str(step))
            if what == "the checkpoint" else None)
    return WorkdirError(write_failure(error, what=what, step=step, workdir=self.workdir,
                                      last_checkpoint=self._last_complete(), path=path))


# ----------------------------------------------------------------------------------------
# The workdir's checks: writable, locked, and a failed write in one line.


def _existing_ancestor(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def check_writable(workdir: str) -> None:
  """Raises WorkdirError unless a file can be written in `workdir` (for a workdir not yet
  made, in the folder that will hold it) and its checkpoints/. Leaves nothing behind."""
  folder = _existing_ancestor(workdir)
  if not os.path.isdir(folder):
    raise WorkdirError(f"--workdir={workdir}: {folder} is a file, not a folder. Give a "
                       "folder for --workdir.")
  checkpoint_dir = os.path.join(folder, checkpoints.CHECKPOINT_DIR)
  for path in [folder] + ([checkpoint_dir] if os.path.isdir(checkpoint_dir) else []):
    try:
      with tempfile.TemporaryFile(dir=path, prefix=".write-test-") as f:
        f.write(b"\0" * _PROBE_BYTES)
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
      raise WorkdirError(
          f"cannot write to {path} ({e.strerror or e}): training needs a --workdir it can "
          "write to. Free space there, fix its permissions, or give another --workdir."
      ) from e


def _describe_holder(path: str) -> str:
  try:
    with open(path) as f:
      holder = json.load(f)
    return (f"process {holder['pid']} on {holder['host']} (started {holder['started']}: "
            f"{holder['command']})")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


class WorkdirLock:
  """An exclusive `flock` on workdir/train.lock, held from `acquire` until `release` or the
  holder's death. The file stays (the last holder's pid, host, start and command)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirError naming the process that holds it."""
    if self._fd is not None:
      return
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise WorkdirError(f"cannot lock {self.path} ({e.strerror}): the workdir's file "
                           "system does not support locks; give a local --workdir.") from e
      raise WorkdirError(
          f"{os.path.dirname(self.path)} is in use by {_describe_holder(self.path)}. Wait "
          "for that run to end (or stop it), or give another --workdir.") from None
    holder = dict(pid=os.getpid(), host=socket.gethostname(),
                  started=datetime.datetime.now().isoformat(timespec="seconds"),
                  command=" ".join(sys.argv))
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


# TensorStore puts the OS's error inside its message: "...: No space left on device
# [os_error_code='28']", and the file in quotes; an OSError that reached Orbax as text reads
# "[Errno 28] No space left on device: '<file>'".
_TENSORSTORE_OS_ERROR = re.compile(r":\s*(?P<reason>[^:\[\]\"]+?)\s*\[os_error_code='\d+'\]")
_PYTHON_OS_ERROR = re.compile(r"\[Errno \d+\]\s*(?P<reason>[^:\[\]\"']+?)\s*(?::|$)", re.M)
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')
# The OS's reasons a write meets, found by their words where the text has neither form above
# (TensorStore words some of its failures, e.g. opening a driver, otherwise).
_WRITE_REASONS = tuple(os.strerror(code) for code in (
    errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO))


def write_failure(error: BaseException, *, what: str, step: int, workdir: str,
                  last_checkpoint: int | None, path: str | None = None) -> str:
  """One line for a write that failed at `step`: what was written and where (the error's
  path, else `path`), the OS's reason, and the last good checkpoint (kept, to resume from
  once the cause is fixed)."""
  default_path = path
  os_error = next((e for e in errors.chain(error) if isinstance(e, OSError)), None)
  if os_error is not None:
    reason, path = os_error.strerror or str(os_error), os_error.filename
  else:
    text = "\n".join(str(e) for e in errors.chain(error))
    found = _TENSORSTORE_OS_ERROR.search(text) or _PYTHON_OS_ERROR.search(text)
    reason = (found.group("reason") if found else
              next((r for r in _WRITE_REASONS if r in text), errors.one_line(error)[:200]))
    paths = _QUOTED_PATH.findall(text)
    path = paths[-1] if paths else None
  path = path or default_path
  where = f" ({path})" if path else ""
  kept = (f"the last good checkpoint, step {last_checkpoint}, is intact in "
          f"{checkpoints.checkpoint_dir(workdir)}" if last_checkpoint is not None
          else "no checkpoint had been written yet")
  return (f"writing {what} at step {step} failed{where}: {reason}. Training stopped; {kept}. "
          "Free space (or fix the disk) and rerun the same command to resume.")
