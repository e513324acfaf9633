"""Files that are whole or absent: atomic writes, and earlier versions kept beside the new.

Every file the library writes outside Orbax (configs, results, the data cache, images) goes
through `atomic_write`: the bytes go to a temporary file next to the target, which is renamed
over it only once complete, so a kill or a full disk mid-write leaves the old file or the new
one, never half of either.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO[Any]]:
  """Opens a temporary file next to `path` (mode "w" or "wb"); renames it to `path` on
  success, removes it on error. Parent folders are created; the file gets the usual
  permissions (0666 less the umask)."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write opens files to write, mode 'w' or 'wb', not {mode!r}")
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)  # mkstemp makes the file 0600
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_write(path) as f:
    f.write(text)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as indented JSON (keys sorted) to `path` atomically."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def keep_previous(folder: str, names: Sequence[str]) -> int | None:
  """Moves the existing files `names` of `folder` aside as `<stem>.<n><ext>`, with n the
  first number free for all of them; returns n, or None when none of them exists.

  `keep_previous(d, ["results.json", "results.md"])` turns them into results.1.json and
  results.1.md (then .2, ...), so that an earlier version is never overwritten.
  """
  present = [name for name in names if os.path.exists(os.path.join(folder, name))]
  if not present:
    return None

  def numbered(name: str, n: int) -> str:
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f"{stem}.{n}{ext}")

  n = 1
  while any(os.path.exists(numbered(name, n)) for name in names):
    n += 1
  for name in present:
    os.replace(os.path.join(folder, name), numbered(name, n))
  return n
