"""Checkpoints and saved configs of a training workdir, shared by training and evaluation.

Workdir layout:

  workdir/config.json             the config of the latest start (earlier ones: config.<n>.json)
  workdir/checkpoints/<step>/     Orbax checkpoints: items `params`, `opt_state`, `config`,
                                  `meta` ({"model_revision": vma_model.REVISION})

Every checkpoint carries the config that produced it, so `restore_params(workdir)` rebuilds
the model (and the abstract target of the restore) from the checkpoint alone, and the model
revision it was written for: parameters of an earlier form of the model are refused. Orbax writes
a checkpoint into a temporary folder and renames it when complete: a run killed while
saving leaves no half-written `<step>/` folder for a later run to pick up.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import jax
from jax.sharding import Mesh
import ml_collections
import orbax.checkpoint as ocp

from vma_jax import files
from vma_jax import model as vma_model
from vma_jax import sharding

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"

# Config fields that fix the shapes of the saved parameters: a checkpoint can only be
# resumed or restored by a config that agrees on all of them.
MODEL_FIELDS = ("model", "data.image_size")


# Fields renamed since checkpoints were first written: {old dotted name: new one}. Configs
# read from a workdir are brought to today's names, so older runs resume and evaluate as
# before.
RENAMED_FIELDS = {
    "objective.num_samples": "objective.num_importance",
    "validation.num_samples": "validation.num_importance",
}


# Fields added since checkpoints were first written, with the value that earlier runs had:
# configs read from a workdir get them, so those runs compare equal to today's configs.
ADDED_FIELDS = {
    "model.memory_read": "hard",
}


class CheckpointError(RuntimeError):
  """A missing or incompatible checkpoint or config; the message says what to do."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def to_dict(config) -> dict:
  """A plain, JSON-safe dict of a ConfigDict (or dict)."""
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json_best_effort(sort_keys=True))
  return json.loads(json.dumps(config, sort_keys=True, default=str))


def upgrade(config_dict: dict) -> dict:
  """A saved config dict with the fields of `RENAMED_FIELDS` under their current names, and
  those of `ADDED_FIELDS` it lacks at their earlier value."""
  config_dict = json.loads(json.dumps(config_dict))
  for old, new in RENAMED_FIELDS.items():
    *old_path, old_name = old.split(".")
    *new_path, new_name = new.split(".")
    parent = _get(config_dict, ".".join(old_path)) if old_path else config_dict
    if isinstance(parent, dict) and old_name in parent:
      target = _get(config_dict, ".".join(new_path)) if new_path else config_dict
      if isinstance(target, dict) and new_name not in target:
        target[new_name] = parent.pop(old_name)
  for dotted, value in ADDED_FIELDS.items():
    *path, name = dotted.split(".")
    parent = _get(config_dict, ".".join(path)) if path else config_dict
    if isinstance(parent, dict) and name not in parent:
      parent[name] = value
  return config_dict


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


def model_revision(manager: ocp.CheckpointManager, step: int, saved_config) -> int:
  """The model revision (`vma_model.REVISION`) the checkpoint at `step` was written for.

  Checkpoints written before revisions were recorded have no `meta` item; their config tells
  them apart: revision 2 introduced `model.param_init`.
  """
  try:
    restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  except KeyError:
    return 2 if _get(to_dict(saved_config), "model.param_init") is not None else 1
  return int(restored["meta"]["model_revision"])


def check_model_revision(revision: int, *, source: str) -> None:
  """Raises CheckpointError unless `revision` is this version's `vma_model.REVISION`.

  Parameters of another revision have the right shapes but compute another function: loaded,
  they would give other bounds without any error.
  """
  current = vma_model.REVISION
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


def check_compatible(saved_config, config, *, source: str) -> list[str]:
  """Raises CheckpointError if `config` asks for other parameter shapes than `saved_config`.

  Returns the names of the fields that differ without changing the parameters' shapes (a
  longer run, another learning rate), for the caller to report.
  """
  saved, new = to_dict(saved_config), to_dict(config)
  differences = config_differences(saved, new)
  clashes = [name for name in differences
             if any(name == f or name.startswith(f + ".") for f in MODEL_FIELDS)]
  if clashes:
    detail = "; ".join(f"{name}: {_get(saved, name)!r} there, {_get(new, name)!r} here"
                       for name in clashes)
    raise CheckpointError(
        f"{source} was written for a different model ({detail}). Resuming would load "
        "parameters of the wrong shapes. Train this config in a new --workdir, or pass the "
        f"saved model settings (see {source}) to continue that run.")
  return differences


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
      return ml_collections.ConfigDict(upgrade(json.load(f)))
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is not a readable config ({e}). Restore it from "
                          "the config file the run was started with.") from e


class _OrbaxNoise(logging.Filter):
  """Drops Orbax's INFO lines (tens per save or restore, under the entry points' INFO level)
  and its warning that a manager opened read-only is read-only; its other warnings pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f"{os.sep}orbax{os.sep}" not in record.pathname:
      return True
    if record.levelno < logging.WARNING:
      return False
    return not record.getMessage().startswith("Given directory is read only")


_ORBAX_NOISE = _OrbaxNoise()


def make_manager(workdir: str, *, max_to_keep: int | None = None,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """Orbax CheckpointManager over `workdir/checkpoints` (asynchronous saves)."""
  directory = checkpoint_dir(workdir)
  if read_only and not os.path.isdir(directory):
    raise CheckpointError(
        f"{directory} does not exist: no checkpoint to restore. Train first "
        f"(python train.py --config=configs/<name>.py --workdir={workdir}).")
  logging.getLogger("absl").addFilter(_ORBAX_NOISE)  # idempotent
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep, create=not read_only,
      read_only=read_only, enable_async_checkpointing=not read_only,
      save_interval_steps=0 if read_only else 1)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, params, opt_state, config) -> None:
  """Starts an (asynchronous) save of params, optimiser state, config and the model
  revision at `step`."""
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      opt_state=ocp.args.StandardSave(opt_state),
      config=ocp.args.JsonSave(to_dict(config)),
      meta=ocp.args.JsonSave({"model_revision": vma_model.REVISION})))


def saved_config(manager: ocp.CheckpointManager, step: int) -> ml_collections.ConfigDict:
  """The config stored with the checkpoint at `step`."""
  restored = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
  return ml_collections.ConfigDict(upgrade(restored["config"]))


def restore(manager: ocp.CheckpointManager, step: int, **abstract_items) -> dict:
  """Restores the named items (params=..., opt_state=...) onto abstract targets.

  Targets are pytrees of jax.ShapeDtypeStruct with shardings: the arrays are placed as
  those say, whatever devices wrote them. A stored array of another shape or structure is a
  CheckpointError.
  """
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        name: ocp.args.StandardRestore(target) for name, target in abstract_items.items()}))
  except (ValueError, KeyError, TypeError) as e:
    # Orbax raises these for other shapes or trees, but also for arrays it cannot place (a
    # target without shardings, for a checkpoint written on other devices): say both.
    raise CheckpointError(
        f"the checkpoint at step {step} in {manager.directory} could not be restored as "
        f"this config's {', '.join(abstract_items)} ({type(e).__name__}: {str(e)[:500]}). "
        "If its shapes or structure differ, it was written by another model or optimiser "
        "(e.g. optim.grad_clip_norm switched on or off): use a new --workdir, or the config "
        "the run was started with.") from e
  return {name: restored[name] for name in abstract_items}


def restore_params(workdir: str, step: int | None = None, mesh: Mesh | None = None):
  """(params, step, config) of the checkpoint at `step` (default: the latest) in workdir.

  The model is rebuilt from the config saved with the checkpoint, so evaluation needs only
  the workdir. The parameters are replicated over `mesh` (default: every device of every
  process), whatever the devices and mesh that wrote them.
  """
  mesh = sharding.make_mesh() if mesh is None else mesh
  replicated, _ = sharding.shardings(mesh)
  manager = make_manager(workdir, read_only=True)
  try:
    steps = manager.all_steps()
    if not steps:
      raise CheckpointError(
          f"no checkpoint in {manager.directory}. Train first (python train.py "
          f"--config=configs/<name>.py --workdir={workdir}), or pass the workdir of a "
          "finished run.")
    if step is None:
      step = manager.latest_step()
    elif step not in steps:
      raise CheckpointError(f"no checkpoint at step {step} in {manager.directory}; "
                            f"available steps: {sorted(steps)}.")
    config = saved_config(manager, step)
    check_model_revision(model_revision(manager, step, config),
                         source=os.path.join(manager.directory, str(step)))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(functools.partial(vma_model.init_params, config), jax.random.key(0)))
    params = restore(manager, step, params=abstract)["params"]
  finally:
    manager.close()
  return params, int(step), config
