"""Exported models (`vma_jax.pretrained`): a small untrained model's checkpoint exported with its
results holds the checkpoint's parameters bitwise; evaluation, sampling and classification
read the folder as a workdir and give the numbers the workdir gives; a changed parameters
file is named as such; an export never replaces another model; evaluate.py takes the folder
as --workdir."""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from helpers import REPO_ROOT, assert_params_equal, child_env, small_config
from vma_jax import checkpoints
from vma_jax import classify
from vma_jax import cli
from vma_jax import evaluate
from vma_jax import model as vma_model
from vma_jax import one_shot
from vma_jax import pretrained
from vma_jax import sample

# Lake's one-shot runs: $VMA_ONE_SHOT_RUNS, else beside the Omniglot archives.
RUNS = os.environ.get(one_shot.RUNS_ENV) or str(
    REPO_ROOT.parent / "shared" / "data" / "omniglot_one_shot" / one_shot.RUNS_FILE)
STEP = 3
# One tiny cell: the same numbers from the workdir and from the exported folder.
EVAL = dict(cells="1:1", num_importance=2, num_targets=2, batch_size=2, chunk_size=2)


def _save_run(workdir: str, config, seed: int) -> None:
  """A workdir with one checkpoint, at STEP, of an untrained model (as conftest's
  untrained_run, at small_config's size)."""
  params = vma_model.init_params(config, jax.random.key(seed))
  checkpoints.save_config(workdir, config)
  manager = checkpoints.make_manager(workdir)
  checkpoints.save(manager, STEP, params, optax.adam(1e-3).init(params), config)
  manager.wait_until_finished()
  manager.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, archive_dir, omniglot_data_dir, omniglot_test):
  """(workdir, exported folder): the workdir evaluated at EVAL, exported with its results.

  The exported config has no data paths, so the data comes from $VMA_OMNIGLOT_DIR and
  $TFDS_DATA_DIR, set here to the session's."""
  del omniglot_test  # prepared in omniglot_data_dir
  config = small_config()
  config.data.archive_dir, config.data.data_dir = archive_dir, omniglot_data_dir
  root = tmp_path_factory.mktemp("pretrained")
  workdir, out = str(root / "run"), str(root / "pretrained" / "tiny")
  _save_run(workdir, config, seed=1)
  evaluate.evaluate_workdir(workdir, **EVAL)
  with pytest.MonkeyPatch.context() as env:
    env.setenv("VMA_OMNIGLOT_DIR", archive_dir)
    env.setenv("TFDS_DATA_DIR", omniglot_data_dir)
    pretrained.export(workdir, out, results_dir=os.path.join(workdir, "eval"))
    yield workdir, out


def test_export_holds_the_checkpoints_parameters_bitwise(exported):
  workdir, out = exported
  folder = pathlib.Path(out)
  assert sorted(p.name for p in folder.iterdir() if p.is_file()) == [
      "config.json", "model.json", "params.msgpack", "results.csv", "results.json", "results.md"]
  params, step, config = checkpoints.restore_params(workdir)
  info = json.loads((folder / "model.json").read_text())
  data = (folder / "params.msgpack").read_bytes()
  assert info["step"] == step == STEP and info["format"] == pretrained.FORMAT
  assert info["params_sha256"] == hashlib.sha256(data).hexdigest()
  assert info["num_params"] == sum(leaf.size for leaf in jax.tree.leaves(params))
  assert info["model_revision"] == vma_model.REVISION
  assert set(info["versions"]) == {"vma_jax", "jax", "flax"}
  # The Table 1 cells evaluated, as results.json (copied beside the model) has them.
  saved = json.loads((pathlib.Path(workdir) / "eval" / "results.json").read_text())
  assert (folder / "results.json").read_text() == json.dumps(saved, indent=2)
  assert [(c["cell"], c["bound"]) for c in info["results"]["cells"]] == [
      (r["cell"], r["bound"]) for r in saved["results"]]

  loaded, loaded_step, loaded_config = checkpoints.restore_params(out)
  assert loaded_step == STEP
  assert_params_equal(loaded, params)
  assert checkpoints.tree_digest(loaded) == checkpoints.tree_digest(params)  # bitwise
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(loaded))
  # The same config, but for the training machine's data paths.
  assert checkpoints.config_differences(config, loaded_config) == [
      "data.archive_dir", "data.data_dir"]
  assert loaded_config.data.archive_dir == loaded_config.data.data_dir == ""

  # The commands' --step checks read model.json, without starting JAX.
  assert checkpoints.restorable_steps(out) == [STEP]
  cli.require_step(out, STEP, "evaluate.py")
  with pytest.raises(SystemExit) as exit_info:
    cli.require_step(out, STEP + 1, "evaluate.py")
  assert exit_info.value.code == cli.USAGE_ERROR
  with pytest.raises(checkpoints.CheckpointError, match=f"of step {STEP} only"):
    checkpoints.restore_params(out, STEP + 1)


@pytest.mark.slow
def test_evaluate_sample_and_classify_give_the_workdirs_numbers(exported, monkeypatch):
  workdir, out = exported
  # Evaluation: the fixture evaluated the workdir with the same settings.
  results = evaluate.evaluate_workdir(out, **EVAL)
  saved = json.loads((pathlib.Path(workdir) / "eval" / "results.json").read_text())
  assert [r.bound for r in results] == [r["bound"] for r in saved["results"]]
  assert json.loads((pathlib.Path(out) / "eval" / "results.json").read_text())["meta"][
      "step"] == STEP

  sheets = [sample.sample_workdir(w, test_class=5, count=2, num_generated=2)
            for w in (workdir, out)]
  assert sheets[1][0] == os.path.join(out, "samples", "class5_T2.png")
  for name in ("q_S", "posterior_NxHxW", "prior_NxHxW", "memory_TxHxW"):
    np.testing.assert_array_equal(getattr(sheets[0][1], name), getattr(sheets[1][1], name))

  try:
    runs = one_shot.resolve_source(RUNS)
  except one_shot.OneShotError as e:
    pytest.skip(f"Lake's one-shot runs not found ({e})")
  # The first two runs (40 trials) are enough to compare; "address" is the cheapest model
  # classifier (no samples), "pixel" the one without the model.
  load_runs = one_shot.load_runs

  def first_two_runs(*args, **kwargs):
    loaded = load_runs(*args, **kwargs)
    return dataclasses.replace(loaded, runs=loaded.runs[:2])

  monkeypatch.setattr(one_shot, "load_runs", first_two_runs)
  by_folder = [classify.classify_workdir(w, runs=runs, classifiers="address,pixel",
                                         batch_size=20)[0]
               for w in (workdir, out)]
  for a, b in zip(*by_folder):
    assert a.name == b.name and a.trials == 40
    np.testing.assert_array_equal(a.predicted_GxQ, b.predicted_GxQ)
  metas = [json.loads(pathlib.Path(w, "classify", "results.json").read_text())["meta"]
           for w in (workdir, out)]
  assert metas[0]["params_sha256"] == metas[1]["params_sha256"]
  assert metas[0]["step"] == metas[1]["step"] == STEP


def test_a_changed_params_file_is_named(exported, tmp_path):
  _, out = exported
  copy = tmp_path / "copy"
  shutil.copytree(out, copy, ignore=shutil.ignore_patterns("eval*", "samples", "classify"))
  data = bytearray((copy / "params.msgpack").read_bytes())
  data[len(data) // 2] ^= 0x01
  (copy / "params.msgpack").write_bytes(bytes(data))
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.restore_params(str(copy))
  assert str(error.value).startswith(
      f"{copy / 'params.msgpack'} does not match the sha256 in {copy / 'model.json'}: the file "
      "is damaged or was changed.")


def _snapshot(folder: str) -> dict[str, tuple[bytes, int]]:
  return {str(p): (p.read_bytes(), p.stat().st_mtime_ns)
          for p in sorted(pathlib.Path(folder).rglob("*")) if p.is_file()}


def test_an_export_never_replaces_another_model(exported, tmp_path):
  workdir, out = exported
  config = checkpoints.load_config(workdir)
  other = str(tmp_path / "other")
  _save_run(other, config, seed=2)
  before = _snapshot(out)
  with pytest.raises(pretrained.ExportError, match="holds another model"):
    pretrained.export(other, out)
  assert _snapshot(out) == before
  # Into a training workdir neither.
  with pytest.raises(pretrained.ExportError, match="is a training workdir"):
    pretrained.export(other, workdir)
  # The same model again: its files are rewritten, its results kept.
  again = pretrained.export(workdir, out)
  assert again["params_sha256"] == json.loads(
      (pathlib.Path(out) / "model.json").read_text())["params_sha256"]
  assert "results" in again and (pathlib.Path(out) / "results.md").exists()


@pytest.mark.slow
def test_evaluate_command_on_the_exported_model(exported, archive_dir, omniglot_data_dir):
  _, out = exported
  eval_dir = pathlib.Path(out) / "eval"
  shutil.rmtree(eval_dir, ignore_errors=True)
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / "evaluate.py"), f"--workdir={out}", f"--step={STEP}",
       "--cells=1:1", "--num_importance=2", "--num_targets=2", "--batch_size=2",
       "--chunk_size=2", "--cpu_devices=1"],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
      # GLIBC_TUNABLES set: the command runs without re-executing itself (vma_jax/cpu/host.py).
      env=child_env(VMA_OMNIGLOT_DIR=archive_dir, TFDS_DATA_DIR=omniglot_data_dir,
                    GLIBC_TUNABLES=""))
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads((eval_dir / "results.json").read_text())
  shipped = json.loads((pathlib.Path(out) / "model.json").read_text())["results"]
  assert saved["meta"]["step"] == STEP
  assert saved["results"][0]["bound"] == shipped["cells"][0]["bound"]
  assert "| 1:1 |" in result.stdout


def test_command_outputs_in_a_shipped_folder_are_not_committed():
  if not (REPO_ROOT / ".git").exists() or shutil.which("git") is None:
    pytest.skip("not a git clone")

  def ignored(path):
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", path],
                          cwd=REPO_ROOT).returncode == 0

  for path in ("pretrained/x/eval/results.json", "pretrained/x/eval_bfloat16/results.md",
               "pretrained/x/samples/class5_T3.png", "pretrained/x/classify/wrong.png"):
    assert ignored(path), path
  for path in ("pretrained/x/params.msgpack", "pretrained/x/model.json",
               "pretrained/x/config.json", "pretrained/x/results.md"):
    assert not ignored(path), path
