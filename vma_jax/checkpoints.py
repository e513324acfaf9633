"""Checkpoints and saved configs of a training workdir, shared by training and evaluation.

Workdir layout:

  workdir/config.json             the config of the latest start (earlier ones: config.<n>.json)
  workdir/checkpoints/<step>/     Orbax checkpoints: items `params`, `opt_state`, `config`,
                                  `meta` ({"model_revision": vma_model.REVISION,
                                  "sha256": {item: digest}}), and files.sha256.json
  workdir/damaged_checkpoints/    checkpoints that failed to restore, moved aside by training
                                  (`vma_jax.run`)

Every checkpoint carries the config that produced it, so `restore_params(workdir)` rebuilds
the model (and the abstract target of the restore) from the checkpoint alone, and the model
revision it was written for: parameters of an earlier form of the model are refused. Orbax writes
a checkpoint into a temporary folder and renames it when complete: a run killed while
saving leaves no half-written `<step>/` folder for a later run to pick up.

An exported model (`vma_jax.pretrained`) is a folder that `restore_params` reads as it reads a
workdir, so every command and notebook takes it as --workdir:

  folder/config.json              the config that trained the parameters (as a workdir's)
  folder/params.msgpack           `flax.serialization.to_bytes` of the float32 parameters
  folder/model.json               the step, the sha256 of params.msgpack, the model revision,
                                  the parameter count, versions, date (and results, if exported
                                  with them)

What a disk can still do to a finished checkpoint (a truncated file, a flipped byte, a lost
metadata file) is caught on restore: `save` records a sha256 of every item's values, training
records one of every file of its params and opt_state once the save is complete
(`record_files`, workdir/checkpoints/<step>/files.sha256.json), and `restore_newest` reads a
checkpoint back only if those files are as recorded, load, and their values hash to the
recorded digests and are finite. A checkpoint that fails is a `DamagedCheckpointError`;
`restore_newest` goes on to the next older one and reports the damaged ones, which are never
deleted.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import logging
import os
import re
from typing import Any, Callable, NamedTuple

from flax import serialization
import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from vma_jax import errors
from vma_jax import files
from vma_jax import model as vma_model
from vma_jax import sharding

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged_checkpoints"
# An exported model's files (`vma_jax.pretrained`).
MODEL_FILE = "model.json"
PARAMS_FILE = "params.msgpack"

# Config fields that fix the shapes of the saved parameters: a checkpoint can only be
# resumed or restored by a config that agrees on all of them.
MODEL_FIELDS = ("model", "data.image_size")


# Fields a resumed run may change freely: how long it runs, how often it logs and saves,
# its validation and evaluation, where the data lives. Any other change alters what is
# trained from the checkpoint on and needs train.py --allow_config_change
# (`check_unchanged`).
FREE_FIELDS = ("train.num_steps", "train.log_every", "train.checkpoint_every",
               "train.max_checkpoints", "train.validate_every", "train.image_every",
               "train.tensorboard", "validation", "eval", "data.archive_dir", "data.data_dir")

CONFIG_HISTORY_FILE = "config_history.jsonl"
FILES_DIGEST = "files.sha256.json"  # in a step's folder: the sha256 of its items' files


class CheckpointError(RuntimeError):
  """A missing or incompatible checkpoint or config; the message says what to do."""


class ConfigChangedError(CheckpointError):
  """A resumed run whose config trains otherwise than its checkpoint's, without
  --allow_config_change."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint whose files do not read back what was saved: `step` and `reason`."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"the checkpoint at step {step} is damaged: {reason}")
    self.step, self.reason = step, reason


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def saved_steps(workdir: str) -> list[int]:
  """The steps of the finished checkpoints in workdir, from the folders' names (without
  starting JAX); a save in progress writes into a temporary folder, not counted."""
  directory = checkpoint_dir(workdir)
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(name) for name in names if name.isdigit())


def is_exported(path: str) -> bool:
  """Whether `path` is an exported model's folder (`vma_jax.pretrained`): it has model.json or
  params.msgpack and no checkpoints/ (a training workdir's checkpoints come first)."""
  return (not os.path.isdir(checkpoint_dir(path))
          and any(os.path.isfile(os.path.join(path, name)) for name in (MODEL_FILE, PARAMS_FILE)))


def read_model_info(path: str) -> dict:
  """The model.json of the exported model in folder `path`; CheckpointError if it is missing
  or unreadable."""
  model_path = os.path.join(path, MODEL_FILE)
  try:
    with open(model_path) as f:
      info = json.load(f)
    int(info["step"]), str(info["params_sha256"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f"{model_path} is not a readable model description ({type(e).__name__}: {e}): the "
        "folder is not a complete exported model. Export it again (python -m "
        "vma_jax.pretrained), or fetch it again.") from e
  return info


def restorable_steps(path: str) -> list[int]:
  """The steps `restore_params(path, step)` takes, from the files alone (without starting
  JAX): a workdir's checkpoints (`saved_steps`), or the one step of an exported model."""
  if not is_exported(path):
    return saved_steps(path)
  try:
    return [int(read_model_info(path)["step"])]
  except CheckpointError:
    return []  # restore_params says what is wrong


def to_dict(config) -> dict:
  """A plain, JSON-safe dict of a ConfigDict (or dict)."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort(sort_keys=True))
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def _get(config_dict: dict, dotted: str) -> Any:
  value = config_dict
  for part in dotted.split("."):
    if not isinstance(value, dict) or part not in value:
      return None
    value = value[part]
  return value


def config_differences(old, new) -> list[str]:
  """Dotted names of the fields that differ between two configs (dicts or ConfigDicts)."""
  return _differences(to_dict(old), to_dict(new), "")


def _differences(old: dict, new: dict, prefix: str) -> list[str]:
  names = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      names += _differences(a, b, f"{prefix}{key}.")
    elif a != b:
      names.append(f"{prefix}{key}")
  return names


def check_model_revision(revision: int | None, *, source: str) -> None:
  """Raises CheckpointError unless `revision` is this version's `vma_model.REVISION`.

  Parameters of another revision have the right shapes but compute another function: loaded,
  they would give other bounds without any error.
  """
  current = vma_model.REVISION
  if revision is None:
    raise CheckpointError(
        f"{source} records no model revision: it was written by an early version of vma_jax, "
        "whose checkpoints this version does not read. Train again in a new --workdir, or "
        "use the version of vma_jax that trained it.")
  if revision > current:
    raise CheckpointError(
        f"{source} was written for revision {revision} of the model by a newer version of "
        f"vma_jax; this version knows revisions up to {current}. Update vma_jax to "
        "evaluate or resume it.")
  if revision < current:
    changes = "; ".join(f"revision {r}: {vma_model.REVISION_CHANGES[r]}"
                        for r in range(revision + 1, current + 1))
    raise CheckpointError(
        f"{source} was written for revision {revision} of the model, by an earlier version "
        f"of vma_jax; this version computes revision {current} ({changes}). Its parameters "
        "would compute another model. Train again in a new --workdir, or use the version "
        "of vma_jax that trained it.")


def _in(name: str, fields) -> bool:
  return any(name == f or name.startswith(f + ".") for f in fields)


def describe_differences(old, new, names) -> str:
  """'a.b: 1 there, 2 here; ...' for the fields `names` of two configs."""
  old, new = to_dict(old), to_dict(new)
  return "; ".join(f"{name}: {_get(old, name)!r} there, {_get(new, name)!r} here"
                   for name in names)


def check_compatible(saved_config, config, *, source: str) -> list[str]:
  """Raises CheckpointError if `config` asks for other parameter shapes than `saved_config`.

  Returns the names of the fields that differ without changing the parameters' shapes (a
  longer run, another learning rate), for the caller to check (`check_unchanged`).
  """
  differences = config_differences(saved_config, config)
  clashes = [name for name in differences if _in(name, MODEL_FIELDS)]
  if clashes:
    raise CheckpointError(
        f"{source} was written for a different model "
        f"({describe_differences(saved_config, config, clashes)}). Resuming would load "
        "parameters of the wrong shapes. Train this config in a new --workdir, or pass the "
        f"saved model settings (see {source}) to continue that run.")
  return differences


def check_unchanged(saved_config, config, *, source: str) -> None:
  """Raises ConfigChangedError, listing them, if fields outside `FREE_FIELDS` differ."""
  changed = [name for name in config_differences(saved_config, config)
             if not _in(name, FREE_FIELDS)]
  if changed:
    raise ConfigChangedError(
        f"{source} was trained with another config: "
        f"{describe_differences(saved_config, config, changed)}. Resuming would go on "
        "with other settings than the run's. If that is intended (e.g. a lowered "
        "learning rate), pass --allow_config_change and it is recorded in the workdir's "
        f"{CONFIG_HISTORY_FILE}; otherwise give the run's settings, or a new --workdir.")


def record_config_change(workdir: str, step: int, saved_config, config) -> dict | None:
  """Appends to workdir/config_history.jsonl the fields in which `config` differs from the
  config of the checkpoint it resumes at `step` ({name: [there, here]}); returns the record,
  or None when nothing differs."""
  names = config_differences(saved_config, config)
  if not names:
    return None
  old, new = to_dict(saved_config), to_dict(config)
  record = {"step": int(step),
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "changed": {name: [_get(old, name), _get(new, name)] for name in names}}
  path = os.path.join(workdir, CONFIG_HISTORY_FILE)
  earlier = ""
  if os.path.exists(path):
    with open(path) as f:
      earlier = f.read()
  files.write_text(path, earlier + json.dumps(record, sort_keys=True) + "\n")
  return record


def save_config(workdir: str, config) -> str:
  """Writes `workdir/config.json`; returns its path.

  An existing config.json that differs is kept as config.<n>.json (never overwritten); one
  that asks for a different model is an error (CheckpointError), as resuming would be.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  new = to_dict(config)
  if os.path.exists(path):
    old = to_dict(load_config(workdir))
    if old == new:
      return path
    check_compatible(old, new, source=path)
    files.keep_previous(workdir, [CONFIG_FILE])
  files.write_json(path, new)
  return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved in `workdir/config.json`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise CheckpointError(
        f"{path} does not exist: {workdir} is not a training workdir. Train first "
        f"(python train.py --config=configs/<name>.py --workdir={workdir}).")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is not a readable config ({e}). Restore it from "
                          "the config file the run was started with.") from e


class _OrbaxLogs(logging.Filter):
  """Orbax's log records as a run shows them: its INFO lines (tens per save or restore, under
  the commands' INFO level) and its note that a read-only manager is read-only dropped, its
  other warnings and errors one line each, without the traceback (kept at absl's debug
  verbosity); asyncio's "Future exception was never retrieved", which a failed asynchronous
  write repeats for every array, dropped (the caller reports the failure once). With
  `everything`, every record of Orbax and asyncio is dropped: while a damaged checkpoint is
  read, each of its arrays logs a traceback, and the caller reports it in one line."""

  def __init__(self, everything: bool = False):
    super().__init__()
    self.everything = everything

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name.startswith("asyncio"):
      return not self.everything and "exception was never retrieved" not in record.getMessage()
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if self.everything or record.levelno < logging.WARNING:
      return False
    message = record.getMessage()
    if message.startswith("Given directory is read only"):
      return False
    if record.exc_info and logging.getLogger("absl").getEffectiveLevel() > logging.DEBUG:
      record.msg, record.args = errors.one_line(message)[:300], ()
      record.exc_info = record.exc_text = None
    return True


@contextlib.contextmanager
def orbax_logs(everything: bool = False):
  """A context in which Orbax's log records are filtered (`_OrbaxLogs`): a filter on the absl
  and asyncio loggers, removed on leaving."""
  logs = _OrbaxLogs(everything)
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  for logger in loggers:
    logger.addFilter(logs)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(logs)


def make_manager(workdir: str, *, max_to_keep: int | None = None,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax CheckpointManager over `workdir/checkpoints` (asynchronous saves). Its log lines
  are filtered within `orbax_logs`."""
  directory = checkpoint_dir(workdir)
  if read_only and not os.path.isdir(directory):
    raise CheckpointError(
        f"{directory} does not exist: no checkpoint to restore. Train first "
        f"(python train.py --config=configs/<name>.py --workdir={workdir}).")
  # A writer removes the temporary folders of saves that were cut short (a kill, a full
  # disk): the workdir lock (`vma_jax.run`) ensures no other run is writing them.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep, create=not read_only,
      read_only=read_only, enable_async_checkpointing=not read_only,
      save_interval_steps=0 if read_only else 1, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(directory, options=options)


def _host_value(x) -> np.ndarray:
  """The value of a leaf on the host; a replicated array spanning several processes is read
  from this process's copy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError("checkpoint digests need replicated arrays")
    x = x.addressable_data(0)
  return np.asarray(jax.device_get(x))


def tree_digest(tree) -> str:
  """sha256 of a pytree's values: every leaf's dtype, shape and bytes, in tree order."""
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    value = np.ascontiguousarray(_host_value(leaf))
    digest.update(f"{value.dtype.str}{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()


def _json_digest(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def save(manager: ocp.CheckpointManager, step: int, params, opt_state, config) -> None:
  """Starts an (asynchronous) save of params, optimiser state, config and the model
  revision at `step`, with the sha256 of each item's values (`tree_digest`) for the restore
  to verify."""
  config_dict = to_dict(config)
  digests = {"params": tree_digest(params), "opt_state": tree_digest(opt_state),
             "config": _json_digest(config_dict)}
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      config=ocp.args.JsonSave(config_dict),
      meta=ocp.args.JsonSave({"model_revision": vma_model.REVISION, "sha256": digests})))


def _file_digests(step_dir: str, items) -> dict[str, str]:
  """{path relative to step_dir: sha256} of every file of the named items' folders."""
  digests = {}
  for item in items:
    for root, _, names in os.walk(os.path.join(step_dir, item)):
      for name in names:
        path = os.path.join(root, name)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
          for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
        digests[os.path.relpath(path, step_dir)] = digest.hexdigest()
  return digests


def record_files(manager: ocp.CheckpointManager, step: int) -> None:
  """Writes the sha256 of the files of the complete checkpoint at `step`'s `params` and
  `opt_state` (FILES_DIGEST in its folder), for a restore to find damage in them before
  Orbax reads them."""
  step_dir = os.path.join(str(manager.directory), str(step))
  files.write_json(os.path.join(step_dir, FILES_DIGEST),
                   _file_digests(step_dir, ("params", "opt_state")))


def _check_files(manager: ocp.CheckpointManager, step: int, items) -> None:
  """Raises DamagedCheckpointError if the items' files differ from those `record_files`
  recorded. Checked before Orbax reads them: Orbax abandons the other reads of a checkpoint
  whose file fails to read, and they print tracebacks long after. Without the record (a run
  stopped between the save and the record) Orbax's read and the value digests decide."""
  step_dir = os.path.join(str(manager.directory), str(step))
  path = os.path.join(step_dir, FILES_DIGEST)
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      recorded = json.load(f)
  except (OSError, ValueError) as e:
    raise DamagedCheckpointError(step, f"its {FILES_DIGEST} does not load ({_reason(e)})") from e
  actual = _file_digests(step_dir, items)
  for item in items:
    paths = sorted(p for p in recorded.keys() | actual.keys()
                   if p.startswith(item + os.sep) and recorded.get(p) != actual.get(p))
    if paths:
      more = f" and {len(paths) - 1} more" if len(paths) > 1 else ""
      what = "is missing" if paths[0] not in actual else "differs"
      raise DamagedCheckpointError(
          step, f"its {item} files differ from those saved ({paths[0]} {what}{more})")


def _reason(error: BaseException) -> str:
  """A short, one-line account of why reading failed: the innermost TensorStore status in the
  exception's chain ("OUT_OF_RANGE: ..."), where there is one."""
  statuses = [e for e in errors.chain(error) if re.match(r"[A-Z_]{4,}: ", str(e))]
  error = statuses[-1] if statuses else error
  text = errors.one_line(error, limit=200)
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _read_meta(manager: ocp.CheckpointManager, step: int) -> dict | None:
  """The checkpoint's `meta` item; None for checkpoints written before it existed."""
  if not os.path.isdir(os.path.join(str(manager.directory), str(step), "meta")):
    return None
  try:
    with orbax_logs(everything=True):
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    int(meta["model_revision"])
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(step, f"its meta item does not load ({_reason(e)})") from e
  return meta


def _read_config(manager: ocp.CheckpointManager, step: int, meta: dict | None) -> dict:
  """The config saved with the checkpoint, as saved, checked against its digest."""
  try:
    with orbax_logs(everything=True):
      config_dict = manager.restore(
          step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    if not isinstance(config_dict, dict):
      raise ValueError(f"a config is a JSON object, not {type(config_dict).__name__}")
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(step, f"its config item does not load ({_reason(e)})") from e
  expected = (meta or {}).get("sha256", {}).get("config")
  if expected is not None and _json_digest(config_dict) != expected:
    raise DamagedCheckpointError(step, "its config item does not match its sha256")
  return config_dict


def _read_items(manager: ocp.CheckpointManager, step: int, meta: dict | None,
                abstract_items: dict) -> dict:
  """The named items restored onto their abstract targets and verified: they load, their
  floating-point values are finite, and they hash to the digests recorded at save time (their
  files, if recorded, are checked first: `_check_files`)."""
  _check_files(manager, step, abstract_items)
  try:
    with orbax_logs(everything=True):
      restored = manager.restore(step, args=ocp.args.Composite(**{
          name: ocp.args.StandardRestore(target) for name, target in abstract_items.items()}))
  except Exception as e:  # pylint: disable=broad-except
    raise DamagedCheckpointError(
        step, f"its {', '.join(abstract_items)} do not load ({_reason(e)})") from e
  digests = (meta or {}).get("sha256", {})
  items = {}
  for name in abstract_items:
    values = [_host_value(leaf) for leaf in jax.tree.leaves(restored[name])]
    if not all(np.isfinite(v).all() for v in values if np.issubdtype(v.dtype, np.floating)):
      raise DamagedCheckpointError(step, f"its {name} hold NaN or infinite values")
    if name in digests and tree_digest(restored[name]) != digests[name]:
      raise DamagedCheckpointError(
          step, f"its {name} do not match the sha256 recorded when it was saved")
    items[name] = restored[name]
  return items


class Restored(NamedTuple):
  """A checkpoint read back by `restore_newest`."""

  step: int
  config: ml_collections.ConfigDict  # the config saved with it
  items: dict  # {name: restored pytree}
  damaged: list[DamagedCheckpointError]  # newer checkpoints skipped, newest first


def restore_newest(manager: ocp.CheckpointManager,
                   abstract_items: Callable[[ml_collections.ConfigDict], dict], *,
                   step: int | None = None,
                   check_config: Callable[[ml_collections.ConfigDict, str], None] | None = None
                   ) -> Restored | None:
  """The newest checkpoint (or the one at `step`) that restores intact; None if there is none.

  Each checkpoint is read as: its meta and config items (verified against their digests),
  the model revision (`check_model_revision`) and `check_config(saved_config, source)`,
  which raise CheckpointError for a checkpoint this code must not take (another model);
  then the items `abstract_items(saved_config)` ({name: abstract pytree with shardings}),
  verified by `_read_items`. A checkpoint that fails to load or verify is skipped for the
  next older one and returned in `damaged`; with `step` given, its damage is raised. If every
  checkpoint is damaged, CheckpointError says so.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise CheckpointError(f"no checkpoint at step {step} in {manager.directory}; "
                            f"available steps: {sorted(steps)}.")
    steps = [step]
  damaged = []
  for candidate in steps:
    source = os.path.join(str(manager.directory), str(candidate))
    try:
      meta = _read_meta(manager, candidate)
      config_dict = _read_config(manager, candidate, meta)
      config = ml_collections.ConfigDict(config_dict)
      check_model_revision(None if meta is None else int(meta["model_revision"]),
                           source=source)
      if check_config is not None:
        check_config(config, source)
      items = _read_items(manager, candidate, meta, abstract_items(config))
    except DamagedCheckpointError as e:
      if step is not None:
        raise CheckpointError(
            f"{e} ({source}). Choose another step (available: "
            f"{sorted(manager.all_steps())}), or omit the step for the newest intact one.") from e
      damaged.append(e)
      continue
    return Restored(int(candidate), config, items, damaged)
  if damaged:
    listed = "; ".join(f"step {e.step}: {e.reason}" for e in damaged)
    raise CheckpointError(
        f"every checkpoint in {manager.directory} is damaged ({listed}). Train again in a "
        "new --workdir, or restore the checkpoints from a copy.")
  return None


def describe_damage(error: DamagedCheckpointError, directory: str, *, now: str) -> str:
  """The one log line for a damaged checkpoint skipped on restore; `now` says what became of
  it ("left in place", "moved to ...")."""
  return (f"Skipped the checkpoint at step {error.step} in {directory}, damaged: "
          f"{error.reason}; it is {now}")


def restore_params(workdir: str, step: int | None = None, mesh: Mesh | None = None):
  """(params, step, config) of the checkpoint at `step` (default: the newest intact one) in
  workdir, or of the exported model in folder `workdir` (`is_exported`).

  The model is rebuilt from the config saved with the checkpoint, so evaluation needs only
  the workdir. The parameters are replicated over `mesh` (default: every device of every
  process), whatever the devices and mesh that wrote them. Damaged checkpoints newer than the
  one restored are left in place and logged, one line each. An exported model is read by
  `restore_exported`.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  replicated, _ = sharding.shardings(mesh)
  if is_exported(workdir):
    return restore_exported(workdir, step, mesh)

  def abstract_params(config):
    return {"params": jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(functools.partial(vma_model.init_params, config), jax.random.key(0)))}

  with orbax_logs():
    manager = make_manager(workdir, read_only=True)
    try:
      if not manager.all_steps():
        raise CheckpointError(
            f"no checkpoint in {manager.directory}. Train first (python train.py "
            f"--config=configs/<name>.py --workdir={workdir}), or pass the workdir of a "
            "finished run.")
      restored = restore_newest(manager, abstract_params, step=step)
    finally:
      manager.close()
  for error in restored.damaged:
    logging.getLogger("absl").warning(
        describe_damage(error, checkpoint_dir(workdir), now="left in place"))
  return restored.items["params"], restored.step, restored.config


def restore_exported(folder: str, step: int | None = None, mesh: Mesh | None = None):
  """(params, step, config) of the exported model in `folder` (`vma_jax.pretrained`).

  params.msgpack must hash to the sha256 that model.json records, and its arrays must have the
  shapes and dtypes of the parameters `vma_model.init_params` makes for config.json; the
  model revision must be this version's (`check_model_revision`). The parameters are
  replicated over `mesh` (default: every device of every process). `step`, if given, must be
  the model's.
  """
  info = read_model_info(folder)
  saved_step = int(info["step"])
  model_path = os.path.join(folder, MODEL_FILE)
  if step is not None and int(step) != saved_step:
    raise CheckpointError(f"{folder} is an exported model of step {saved_step} only, not "
                          f"{step}: omit the step, or give {saved_step}.")
  if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
    raise CheckpointError(f"{folder} has {MODEL_FILE} but no {CONFIG_FILE}: the exported "
                          "model is incomplete. Export it again, or fetch it again.")
  config = load_config(folder)
  revision = info.get("model_revision")
  check_model_revision(None if revision is None else int(revision),
                       source=model_path)

  params_path = os.path.join(folder, PARAMS_FILE)
  try:
    with open(params_path, "rb") as f:
      params_bytes = f.read()
  except OSError as e:
    raise CheckpointError(f"{params_path} does not read ({e}): the exported model is "
                          "incomplete. Export it again, or fetch it again.") from e
  if hashlib.sha256(params_bytes).hexdigest() != info["params_sha256"]:
    raise CheckpointError(
        f"{params_path} does not match the sha256 in {model_path}: the file is damaged or "
        "was changed. Fetch the exported model again, or export it again from its workdir.")

  # The abstract parameters of the saved config: the tree structure that from_bytes restores
  # into, and the shapes and dtypes each array must have.
  abstract = jax.eval_shape(functools.partial(vma_model.init_params, config), jax.random.key(0))
  try:
    host_params = serialization.from_bytes(abstract, params_bytes)
  except Exception as e:  # pylint: disable=broad-except  (msgpack's errors, flax's ValueError)
    raise CheckpointError(
        f"{params_path} does not hold the parameters of the model in "
        f"{os.path.join(folder, CONFIG_FILE)} ({_reason(e)}). Export the model again.") from e
  for (path, leaf), target in zip(jax.tree_util.tree_leaves_with_path(host_params),
                                  jax.tree.leaves(abstract)):
    leaf = np.asarray(leaf)
    if leaf.shape != target.shape or leaf.dtype != target.dtype:
      raise CheckpointError(
          f"{params_path} holds {jax.tree_util.keystr(path)} as {leaf.dtype}{list(leaf.shape)}, "
          f"where the model in {os.path.join(folder, CONFIG_FILE)} has "
          f"{target.dtype}{list(target.shape)}. Export the model again.")
  mesh = sharding.make_mesh() if mesh is None else mesh
  params = sharding.replicate(jax.tree.map(np.asarray, host_params), mesh)
  return params, saved_step, config
