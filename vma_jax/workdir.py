"""A training run's hold on its workdir: checked writable, locked, and its write failures told in
one line.

`check_writable(workdir)` runs before any data is loaded or anything compiled, so that a
read-only or full disk is said at once. `WorkdirLock` is an advisory OS lock (`flock`) on
workdir/train.lock: a second run on the same workdir stops at once, naming the first; the
kernel drops the lock when its holder dies, however it dies, so a killed run never blocks the
next. The file is left in place (it holds the last holder's pid, host and start time; its
presence means nothing). `write_failure` turns the exception of a failed write (a full disk, a
quota, a lost mount) into one line: what was written, at which step, the OS's reason, and
the last good checkpoint.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import re
import socket
import sys
import tempfile

from vma_jax import errors

LOCK_FILE = "train.lock"
_PROBE_BYTES = 1 << 16  # a probe of this size fails on a full disk, not only a read-only one


class WorkdirError(RuntimeError):
  """The workdir cannot be used: not writable, in use by another run, or a write failed."""


def _existing_ancestor(path: str) -> str:
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return path


def check_writable(workdir: str) -> None:
  """Raises WorkdirError unless a file can be written in `workdir` (for a workdir not yet
  made, in the folder that will hold it). Leaves nothing behind."""
  folder = _existing_ancestor(workdir)
  if not os.path.isdir(folder):
    raise WorkdirError(f"--workdir={workdir}: {folder} is a file, not a folder. Give a "
                       "folder for --workdir.")
  checkpoints = os.path.join(folder, "checkpoints")
  for path in [folder] + ([checkpoints] if os.path.isdir(checkpoints) else []):
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
  holder's death."""

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
# [os_error_code='28']", and the file in quotes.
_TENSORSTORE_OS_ERROR = re.compile(r":\s*([^:\[\]\"]+?)\s*\[os_error_code='(\d+)'\]")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


def write_failure(error: BaseException, *, what: str, step: int, workdir: str,
                  last_checkpoint: int | None) -> str:
  """One line for a write that failed at `step`: what was written and where, the OS's
  reason, and the last good checkpoint (kept, to resume from once the cause is fixed)."""
  os_error = next((e for e in errors.chain(error) if isinstance(e, OSError)), None)
  if os_error is not None:
    reason, path = os_error.strerror or str(os_error), os_error.filename
  else:
    text = "\n".join(str(e) for e in errors.chain(error))
    found = _TENSORSTORE_OS_ERROR.search(text)
    reason = found.group(1) if found else errors.one_line(error)[:200]
    paths = _QUOTED_PATH.findall(text)
    path = paths[-1] if paths else None
  where = f" ({path})" if path else ""
  kept = (f"the last good checkpoint, step {last_checkpoint}, is intact in "
          f"{os.path.join(workdir, 'checkpoints')}" if last_checkpoint is not None
          else "no checkpoint had been written yet")
  return (f"writing {what} at step {step} failed{where}: {reason}. Training stopped; {kept}. "
          "Free space (or fix the disk) and rerun the same command to resume.")

