"""A trained model exported for shipping: its parameters, config and results in one folder.

    python -m vma_jax.pretrained --workdir=runs/default --out=pretrained/default \\
        --results=runs/default/eval

`export` restores a checkpoint of a training workdir (default: the newest intact one) and
writes, in `out_dir`:

  params.msgpack        `flax.serialization.to_bytes` of the parameter tree that
                        `vma_jax.model.init_params` makes, as float32 host arrays
  config.json           the config saved with the checkpoint, in a workdir's format
                        (`checkpoints.load_config`), with data.archive_dir and data.data_dir
                        cleared: the loading machine finds Omniglot through
                        $VMA_OMNIGLOT_DIR and $TFDS_DATA_DIR (docs/data.md)
  model.json            format, step, params_sha256 (of params.msgpack), num_params,
                        model_revision, versions (vma_jax, jax, flax), date; with results,
                        the evaluated cells (`results`)
  results.{md,json,csv} evaluate.py's results of that step, copied from `results_dir`

`checkpoints.restore_params(out_dir)` reads the folder as it reads a workdir, after checking
params.msgpack against its sha256 (`checkpoints.restore_exported`), so evaluate.py,
sample.py, classify.py and notebooks/explore.ipynb take it as --workdir (WORKDIR); their
outputs go under it, to eval/, samples/ and classify/. An export never replaces another
model: into a folder that holds one (other parameters, another config) it is refused and
nothing is written; exporting the same model again rewrites its files (e.g. to add results).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil

import flax
from flax import serialization
import jax
import numpy as np

import vma_jax
from vma_jax import checkpoints
from vma_jax import cli
from vma_jax import files
from vma_jax import model as vma_model

FORMAT = 1  # model.json's "format": the layout above
RESULTS_FILES = ("results.md", "results.json", "results.csv")
# What model.json keeps of each evaluated cell (the rest is in results.json).
RESULT_FIELDS = ("cell", "bound", "stderr", "num_importance", "num_targets", "paper",
                 "reproduction")
# Where the data lived on the training machine: not shipped (see the module docstring).
MACHINE_FIELDS = ("archive_dir", "data_dir")
PROGRAM = "python -m vma_jax.pretrained"


class ExportError(ValueError):
  """An export that would replace another model, or results of another step; the message
  says what to do."""


def params_bytes(params) -> bytes:
  """`flax.serialization.to_bytes` of the parameters as float32 host arrays."""
  host = jax.tree.map(np.asarray, jax.device_get(params))
  other = sorted({str(leaf.dtype) for leaf in jax.tree.leaves(host)} - {"float32"})
  if other:
    raise ExportError(f"the parameters hold {', '.join(other)} arrays; an exported model is "
                      "float32 (the model's param dtype)")
  return serialization.to_bytes(host)


def shipped_config(config) -> dict:
  """The config as config.json holds it, without the training machine's data paths."""
  config_dict = checkpoints.to_dict(config)
  for name in MACHINE_FIELDS:
    config_dict["data"][name] = ""
  return config_dict


def read_results(results_dir: str, step: int) -> dict:
  """model.json's `results`: evaluate.py's settings and, per cell, RESULT_FIELDS, from
  results_dir/results.json, which must evaluate `step`."""
  path = os.path.join(results_dir, "results.json")
  try:
    with open(path) as f:
      saved = json.load(f)
    meta, rows = saved["meta"], saved["results"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ExportError(f"{path} is not readable results ({type(e).__name__}: {e}): give the "
                      "eval/ folder that evaluate.py wrote, or export without results") from e
  if int(meta.get("step", -1)) != step:
    raise ExportError(f"{path} evaluates step {meta.get('step')}, not the exported step {step}: "
                      f"evaluate step {step} (python evaluate.py --step={step}), or export "
                      f"--step={meta.get('step')}")
  return {"seed": meta.get("seed"), "dtype": meta.get("dtype"), "device": meta.get("device"),
          "cells": [{k: row.get(k) for k in RESULT_FIELDS} for row in rows]}


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def check_same_model(out_dir: str, params_sha256: str, config_dict: dict) -> None:
  """Raises ExportError if out_dir holds another model: a params.msgpack, a model.json or a
  config.json that differs from what the export writes, or a training workdir's checkpoints."""
  if os.path.isdir(checkpoints.checkpoint_dir(out_dir)):
    raise ExportError(f"{out_dir} is a training workdir (it has checkpoints/): export to a "
                      "folder of its own, e.g. pretrained/<name>")
  refuse = (f"; nothing was written. Export to a new folder, or remove {out_dir} first if the "
            "model it holds is to go")
  params_path = os.path.join(out_dir, checkpoints.PARAMS_FILE)
  if os.path.isfile(params_path):
    with open(params_path, "rb") as f:
      if _sha256(f.read()) != params_sha256:
        raise ExportError(f"{out_dir} holds another model (its {checkpoints.PARAMS_FILE} "
                          f"differs){refuse}")
  if os.path.exists(os.path.join(out_dir, checkpoints.MODEL_FILE)):
    try:
      info = checkpoints.read_model_info(out_dir)
    except checkpoints.CheckpointError as e:
      raise ExportError(f"{out_dir} holds a {checkpoints.MODEL_FILE} that does not read"
                        f"{refuse}") from e
    if info["params_sha256"] != params_sha256:
      raise ExportError(f"{out_dir} holds another model (step {info['step']}, params sha256 "
                        f"{info['params_sha256'][:12]}...){refuse}")
  if os.path.exists(os.path.join(out_dir, checkpoints.CONFIG_FILE)):
    try:
      saved = checkpoints.to_dict(checkpoints.load_config(out_dir))
    except checkpoints.CheckpointError as e:
      raise ExportError(f"{out_dir} holds a {checkpoints.CONFIG_FILE} that does not read"
                        f"{refuse}") from e
    if saved != config_dict:
      changed = checkpoints.config_differences(saved, config_dict)
      raise ExportError(f"{out_dir} holds another model's config (differs in "
                        f"{', '.join(changed)}){refuse}")


def export(workdir: str, out_dir: str, *, step: int | None = None,
           results_dir: str | None = None) -> dict:
  """Writes the checkpoint of `workdir` at `step` (default: the newest intact one) to
  `out_dir` as an exported model (the module docstring has the files); returns model.json's
  contents.

  With `results_dir` (evaluate.py's workdir/eval/ for that step), its results.{md,json,csv}
  are copied beside the model and its cells recorded in model.json; without it, results an
  earlier export of the same model left in out_dir are kept. Everything is checked before
  anything is written: an out_dir that holds another model (`check_same_model`) or results
  of another step raise ExportError. model.json is written last, so a folder without it is an
  interrupted export.
  """
  params, step, config = checkpoints.restore_params(workdir, step)
  data = params_bytes(params)
  digest = _sha256(data)
  config_dict = shipped_config(config)
  check_same_model(out_dir, digest, config_dict)
  results_source = results_dir
  if results_source is None and os.path.isfile(os.path.join(out_dir, "results.json")):
    results_source = out_dir  # an earlier export's results, of the same model
  results = None if results_source is None else read_results(results_source, step)

  info = {
      "format": FORMAT,
      "step": int(step),
      "params_file": checkpoints.PARAMS_FILE,
      "params_sha256": digest,
      "num_params": int(sum(np.size(leaf) for leaf in jax.tree.leaves(params))),
      # restore_params refuses parameters of any other revision.
      "model_revision": vma_model.REVISION,
      "versions": {"vma_jax": vma_jax.__version__, "jax": jax.__version__,
                   "flax": flax.__version__},
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  if results is not None:
    info["results"] = results
  os.makedirs(out_dir, exist_ok=True)
  with files.atomic_write(os.path.join(out_dir, checkpoints.PARAMS_FILE), "wb") as f:
    f.write(data)
  files.write_json(os.path.join(out_dir, checkpoints.CONFIG_FILE), config_dict)
  if results_dir is not None and os.path.abspath(results_dir) != os.path.abspath(out_dir):
    for name in RESULTS_FILES:
      source, target = os.path.join(results_dir, name), os.path.join(out_dir, name)
      if os.path.isfile(source):
        with open(source, "rb") as src, files.atomic_write(target, "wb") as dst:
          shutil.copyfileobj(src, dst)
      elif os.path.isfile(target):
        os.remove(target)  # an earlier export's, of other results
  files.write_json(os.path.join(out_dir, checkpoints.MODEL_FILE), info)
  return info


# ----------------------------------------------------------------------------------------
# The command line: python -m vma_jax.pretrained.


def define_flags() -> None:
  """The command's absl flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "The training run to export.")
  flags.DEFINE_string("out", None, "The folder to write, e.g. pretrained/<name>.")
  flags.DEFINE_integer("step", None, "The checkpoint to export (default: the newest intact "
                       "one).")
  flags.DEFINE_string("results", None, "evaluate.py's results of that step to ship with it "
                      "(workdir/eval).")


def main(argv) -> None:
  """Exports with the flags' settings and prints what was written; errors end in one line."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top

  del argv  # every setting is a flag (cli.run refuses anything else)
  logging.set_verbosity(logging.INFO)
  f = flags.FLAGS
  # Mistakes in the command line first, each one line with exit status 2.
  if not f.workdir or not f.out:
    cli.exit_usage(PROGRAM, "give the training run and the folder to write: --workdir=runs/"
                   "<name> --out=pretrained/<name>")
  cli.require_workdir(f.workdir, PROGRAM)
  if f.step is not None:
    cli.require_step(f.workdir, f.step, PROGRAM)
  if f.results is not None and not os.path.isfile(os.path.join(f.results, "results.json")):
    cli.exit_usage(PROGRAM, f"--results={f.results} has no results.json: evaluate first "
                   f"(python evaluate.py --workdir={f.workdir}), or omit --results")
  try:
    info = export(f.workdir, f.out, step=f.step, results_dir=f.results)
  except ExportError as e:
    cli.exit_usage(PROGRAM, str(e))
  except checkpoints.CheckpointError as e:
    cli.exit_error(PROGRAM, str(e))
  with_results = " with its results" if "results" in info else ""
  print(f"wrote {f.out}: step {info['step']}, {info['num_params']:,} parameters{with_results}; "
        f"{checkpoints.PARAMS_FILE} sha256 {info['params_sha256']}")


if __name__ == "__main__":
  define_flags()
  cli.run(main, PROGRAM)
