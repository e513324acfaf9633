"""Tests of the Table 1 evaluation: cells, determinism, result files, the command line, and
the precision study of benchmarks/precision.py."""

import csv
import dataclasses
import importlib.util
import json
import logging
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import helpers
from benchmarks import precision
from vma_jax import cells
from vma_jax import episodes
from vma_jax import evaluate
from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax import results as vma_results


REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _default_config():
  spec = importlib.util.spec_from_file_location("default", REPO_ROOT / "configs" / "default.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _synthetic_split(num_classes=6, per_class=20, size=26, seed=0):
  """Random binary images in classes of equal size, shaped like an OmniglotSplit."""
  rng = np.random.default_rng(seed)
  images_NxHxW = (rng.random((num_classes * per_class, size, size)) < 0.2).astype(np.uint8)
  labels_N = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  return types.SimpleNamespace(images_NxHxW=images_NxHxW, labels_N=labels_N,
                               alphabets_N=np.zeros_like(labels_N))


@pytest.fixture(scope="module")
def small_model_and_params():
  """The recipe's model at small heads (helpers.SMALL_HEADS), untrained."""
  config = _default_config()
  config.model.update(helpers.SMALL_HEADS)
  model = vma_model.make_model(config)
  params = vma_model.init_params(config, jax.random.key(0))
  return config, model, params


def test_parse_cells():
  assert cells.parse_cells("1:1, 2:19,5/1000,1:0") == [
      cells.Cell(1, 1), cells.Cell(2, 19), cells.Cell(0, 1000, same_class=5), cells.Cell(1, 0)]
  assert len(cells.parse_cells(vma_results.GRID)) == 14
  assert [str(c) for c in cells.parse_cells(vma_results.LARGE_GRID)][-2:] == ["5/500", "5/1000"]
  for bad in ("1-5", "x:5", "0:3", "", "6/5", "0/5", "1:2:3", "1/-4"):
    with pytest.raises(ValueError, match="cell"):
      cells.parse_cells(bad)


def test_targets_per_batch_keeps_the_images_of_a_batch_bounded():
  assert cells.targets_per_batch(16, 19) == 16 and cells.targets_per_batch(16, 0) == 16
  assert cells.targets_per_batch(16, 100) == 3  # 16 x 20 rows // 101 rows per target
  assert cells.targets_per_batch(16, 1000) == 1
  assert cells.targets_per_batch(16, 1000, num_devices=4) == 4  # one per device at least
  assert cells.targets_per_batch(64, 100, num_devices=4) == 12


def test_target_indices_cover_all_or_spread_evenly():
  np.testing.assert_array_equal(episodes.target_indices(50, 0), np.arange(50))
  np.testing.assert_array_equal(episodes.target_indices(50, 5), [0, 10, 20, 30, 40])
  subset = episodes.target_indices(13180, 1000)
  assert len(np.unique(subset)) == 1000 and subset.max() < 13180
  # A spacing of 13.18 < 20 images per class: every one of the 659 classes gets a target.
  assert len(np.unique(subset // 20)) == 659


def test_large_memories_keep_the_peak_memory_of_a_table_1_batch(small_model_and_params):
  """A cell of T = 400 takes so few targets at once that its compiled program needs about
  the temporary memory of a batch at T = 19 (XLA's own figure), not 20 times more."""
  config, model, params = small_model_and_params
  data = episodes.EpisodeData.from_split(_synthetic_split(num_classes=30))
  temp_mb = {}
  for cell in (cells.Cell(2, 19), cells.Cell(0, 400, same_class=5)):
    batch = cells.targets_per_batch(16, cell.memory_size)
    cell_fn = cells.make_cell_fn(model, cell, num_importance=8, chunk_size=8)
    compiled = cell_fn.lower(params, data, cells.cell_key(0, cell),
                             np.arange(batch, dtype=np.int32)).compile()
    temp_mb[cell.memory_size] = compiled.memory_analysis().temp_size_in_bytes / 2**20
  assert temp_mb[400] < 1.6 * temp_mb[19], temp_mb


def test_cell_bound_does_not_depend_on_batch_size_or_chunking(small_model_and_params):
  """Each target's episode and samples depend only on (seed, C, T, target): same numbers."""
  _, model, params = small_model_and_params
  data = episodes.EpisodeData.from_split(_synthetic_split())
  targets = np.arange(0, 120, 15, dtype=np.int32)  # 8 targets over all classes
  common = dict(num_importance=24, targets=targets, seed=0)
  a = evaluate.evaluate_cell(model, params, data, cells.Cell(2, 3), batch_size=8,
                             chunk_size=24, **common)
  b = evaluate.evaluate_cell(model, params, data, cells.Cell(2, 3), batch_size=3,
                             chunk_size=7, **common)
  assert a.num_targets == b.num_targets == 8
  np.testing.assert_allclose(a.bound, b.bound, rtol=1e-5)
  np.testing.assert_allclose(a.stderr, b.stderr, rtol=1e-4)
  assert a.bound > 0 and a.stderr > 0


def test_cell_bound_matches_direct_computation(small_model_and_params):
  """The figure is the mean of -L_K computed directly from the model's log-weights."""
  _, model, params = small_model_and_params
  data = episodes.EpisodeData.from_split(_synthetic_split())
  targets = np.array([1, 22, 45, 99], np.int32)
  result = evaluate.evaluate_cell(model, params, data, cells.Cell(1, 2), num_importance=16,
                                  targets=targets, batch_size=4, chunk_size=5, seed=7)
  key = cells.cell_key(7, cells.Cell(1, 2))
  episode_key, sample_key = jax.random.split(key)
  batch = episodes.sample_cell_episodes(data, episode_key, jnp.asarray(targets),
                                        max_classes=1, memory_size=2)
  keys_B = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(sample_key, jnp.asarray(targets))
  log_w_BxK = jax.jit(model.apply)(params, batch.x_BxHxW, batch.memory_BxTxHxW,
                                   vma_model.sample_keys(keys_B, 0, 16)).log_w_BxK
  expected_B = -np.asarray(objective.iw_bound(log_w_BxK), np.float64)
  np.testing.assert_allclose(result.bound, expected_B.mean(), rtol=1e-5)
  np.testing.assert_allclose(result.stderr, expected_B.std(ddof=1) / 2.0, rtol=1e-3)


def _results():
  address = dict(address_kl=0.5, address_entropy=1.44, mass_target_class=0.9, mass_dummy=0.05)
  return [vma_results.CellResult(1, 5, 80.123, 0.4, 1000, 13180, 1.0, **address),
          vma_results.CellResult(2, 19, 75.5, 0.3, 1000, 13180, 2.0, **address)]


def test_write_results_files(tmp_path):
  paths = vma_results.write_results(_results(), str(tmp_path / "eval"), dict(step=7))
  saved = json.loads(pathlib.Path(paths["json"]).read_text())
  assert saved["meta"]["step"] == 7
  assert saved["results"][0]["bound"] == pytest.approx(80.123)
  assert saved["results"][0]["paper"] == 76.5 and saved["results"][0]["reproduction"] == 75.3
  with open(paths["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [(r["max_classes"], r["memory_size"]) for r in rows] == [("1", "5"), ("2", "19")]
  assert [r["cell"] for r in rows] == ["1:5", "2:19"]
  table = pathlib.Path(paths["md"]).read_text()
  assert "| cell | ours |" in table
  assert "| 1:5 | 80.12 | 0.40 | 76.5 | 75.3 | 1000 | 13180 | 0.50 | 0.90 | 0.05 |" in table
  assert not list((tmp_path / "eval").glob("*.tmp"))

  # A second evaluation (another K, say) keeps the first one's files as results.1.*.
  later = [dataclasses.replace(r, num_importance=10) for r in _results()]
  vma_results.write_results(later, str(tmp_path / "eval"), dict(step=9))
  vma_results.write_results(later[:1], str(tmp_path / "eval"), dict(step=9))
  names = sorted(p.name for p in (tmp_path / "eval").iterdir())
  assert names == ["results.1.csv", "results.1.json", "results.1.md", "results.2.csv",
                   "results.2.json", "results.2.md", "results.csv", "results.json",
                   "results.md"]
  assert json.loads((tmp_path / "eval" / "results.1.json").read_text()) == saved
  assert len(json.loads((tmp_path / "eval" / "results.2.json").read_text())["results"]) == 2
  latest = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert latest["meta"]["step"] == 9 and len(latest["results"]) == 1
  assert "| 1:5 | 80.12 | 0.40 | 76.5 | 75.3 | 10 | 13180 |" in (
      tmp_path / "eval" / "results.md").read_text()


def test_evaluate_command_without_checkpoint_is_a_clear_error(tmp_path):
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / "evaluate.py"), f"--workdir={tmp_path / 'nothing'}",
       "--num_targets=2", "--num_importance=2"],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 2  # a usage error
  assert result.stderr.strip().splitlines() == [
      f"evaluate.py: --workdir={tmp_path / 'nothing'} does not exist: it is not a training "
      "run. Give the workdir of a trained run, or train one first (python train.py "
      f"--config=configs/<name>.py --workdir={tmp_path / 'nothing'})."]


@pytest.mark.slow
def test_evaluate_a_chosen_step(untrained_run):
  """--step picks the checkpoint; a step with no checkpoint is a one-line usage error."""
  import optax  # pylint: disable=g-import-not-at-top
  from vma_jax import checkpoints  # pylint: disable=g-import-not-at-top

  config = checkpoints.load_config(untrained_run)
  newer = vma_model.init_params(config, jax.random.key(2))
  manager = checkpoints.make_manager(untrained_run)
  checkpoints.save(manager, 5, newer, optax.adam(1e-4).init(newer), config)
  manager.wait_until_finished()
  manager.close()
  settings = dict(cells="1:1", num_importance=2, num_targets=2, batch_size=2, chunk_size=2)
  by_step = {}
  for step in (None, 3):
    evaluate.evaluate_workdir(untrained_run, step=step, **settings)
    saved = json.loads((pathlib.Path(untrained_run) / "eval" / "results.json").read_text())
    by_step[step] = saved["meta"]["step"], saved["results"][0]["bound"]
  assert by_step[None][0] == 5 and by_step[3][0] == 3
  assert by_step[None][1] != by_step[3][1]  # other parameters, another bound
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / "evaluate.py"), f"--workdir={untrained_run}",
       "--step=4"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"evaluate.py: --step=4: {untrained_run} has no checkpoint at step 4; its checkpoints "
      "are at steps 3, 5."]


@pytest.mark.slow
def test_evaluate_workdir_end_to_end(untrained_run):
  """A saved checkpoint of the recipe's model, evaluated on real test episodes."""
  workdir, run = untrained_run, pathlib.Path(untrained_run)

  results = evaluate.evaluate_workdir(workdir, cells="1:1,2:3", num_importance=8,
                                      num_targets=6, batch_size=4, chunk_size=8)
  assert [(r.max_classes, r.memory_size) for r in results] == [(1, 1), (2, 3)]
  for r in results:
    # An untrained model on 26x26 images: about 676 * log 2 = 469 nats.
    assert 300 < r.bound < 700 and r.num_targets == 6 and r.num_importance == 8
  saved = json.loads((run / "eval" / "results.json").read_text())
  assert saved["meta"]["step"] == 3 and saved["meta"]["dtype"] == "float32"
  assert os.path.exists(run / "eval" / "results.md")
  # Where the address posterior puts its mass, per cell.
  for row, memory_size in zip(saved["results"], (1, 3)):
    assert 0.0 <= row["address_kl"] <= np.log(memory_size + 2) + 1e-6
    assert row["address_entropy"] == pytest.approx(np.log(memory_size + 2) - row["address_kl"])
    assert 0.0 <= row["mass_target_class"] <= 1.0 and 0.0 <= row["mass_dummy"] <= 1.0
    assert row["mass_target_class"] + row["mass_dummy"] <= 1.0 + 1e-6
  assert saved["results"][0]["mass_target_class"] + saved["results"][0]["mass_dummy"] == (
      pytest.approx(1.0))  # C=1, T=1: the one memory image is of the target's class
  for name in ("bound_vs_T.png", "kl_vs_T.png"):
    with Image.open(run / "eval" / name) as png:
      assert png.format == "PNG" and png.size == (640, 440)
  assert list((run / "eval").glob("events.out.tfevents*"))  # the figures, for TensorBoard

  # Another precision writes beside the run's own results, never over them.
  low = evaluate.evaluate_workdir(workdir, cells="1:1", num_importance=8, num_targets=6,
                                  batch_size=4, chunk_size=8, dtype="bfloat16")
  assert abs(low[0].bound - results[0].bound) < 1.0
  assert json.loads((run / "eval" / "results.json").read_text()) == saved
  low_saved = json.loads((run / "eval_bfloat16" / "results.json").read_text())
  assert low_saved["meta"]["dtype"] == "bfloat16" and len(low_saved["results"]) == 1

  gaps = precision.compare_precision(workdir, dtype="bfloat16", cells="1:1", num_importance=8,
                                     num_targets=6, batch_size=4, chunk_size=8)
  assert gaps[0].reference_bound == pytest.approx(results[0].bound, abs=1e-9)
  assert gaps[0].bound == pytest.approx(low[0].bound, abs=1e-9)
  assert sorted(os.listdir(run)) == sorted(["checkpoints", "config.json", "eval",
                                            "eval_bfloat16"])


def test_cell_values_log_progress_and_drop_the_padding(caplog):
  """Every batch but the last logs its count (log_every_s=0); the values come back in order."""
  caplog.set_level(logging.INFO)
  cell_fn = lambda params, data, key, targets_B: {
      "half": jnp.asarray(targets_B, jnp.float32) / 2, "same": jnp.asarray(targets_B)}
  values = cells.cell_values(cell_fn, None, None, None, np.arange(10), batch_size=4,
                             log_every_s=0.0, name="C=1 T=5: ")
  np.testing.assert_array_equal(values["half"], np.arange(10) / 2)
  np.testing.assert_array_equal(values["same"], np.arange(10))
  assert values["same"].dtype == np.float64
  progress = [r.getMessage() for r in caplog.records if "targets," in r.getMessage()]
  assert [m.split(" s left")[0].rsplit(",", 1)[0] for m in progress] == [
      "C=1 T=5: 4/10 targets", "C=1 T=5: 8/10 targets"]


def test_finished_cells_are_kept_per_settings(tmp_path, caplog):
  identity = dict(params_sha256="ab", step=3, dtype="float32", seed=0, num_importance=8,
                  num_targets=6)
  finished_cells = vma_results.FinishedCells
  eval_dir = str(tmp_path / "eval")
  finished = finished_cells(eval_dir, identity)
  assert finished.cells == {}
  first, second = _results()
  finished.add(first)
  again = finished_cells(eval_dir, identity)
  assert again.cells == {cells.Cell(1, 5): first} and again.path == finished.path
  # Other settings: another file, nothing taken from this one.
  other = finished_cells(eval_dir, dict(identity, num_importance=9))
  assert other.cells == {} and other.path != finished.path
  # Removed once the results written hold all its cells, not before.
  finished.remove_if_within([second])
  assert os.path.exists(finished.path)
  finished.remove_if_within([first, second])
  assert not os.path.exists(finished.path)
  # An unreadable file is ignored with a warning, not an error.
  pathlib.Path(finished.path).write_text("{not json")
  caplog.set_level(logging.WARNING)
  assert finished_cells(eval_dir, identity).cells == {}
  assert "cannot be read" in caplog.text


@pytest.mark.slow
def test_interrupted_evaluation_takes_up_where_it_stopped(untrained_run, monkeypatch):
  """A rerun evaluates only the cells left, with any batch size; the results are the same."""
  workdir, eval_dir = untrained_run, pathlib.Path(untrained_run) / "eval"
  settings = dict(cells="1:1,2:3", num_targets=6, chunk_size=8)
  evaluate_cell, evaluated = evaluate.evaluate_cell, []

  def run(interrupt_at=None, batch_size=4, num_importance=8):
    """evaluate_workdir, stopped by a KeyboardInterrupt at the `interrupt_at`-th new cell."""
    evaluated.clear()

    def recorded(*args, **kwargs):
      evaluated.append(tuple(args[3])[:2])
      if len(evaluated) == interrupt_at:
        raise KeyboardInterrupt
      return evaluate_cell(*args, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_cell", recorded)
    return evaluate.evaluate_workdir(workdir, batch_size=batch_size,
                                     num_importance=num_importance, **settings)

  with pytest.raises(KeyboardInterrupt):
    run(interrupt_at=2)
  [partial] = eval_dir.glob("partial-*.json")
  assert not (eval_dir / "results.json").exists()

  resumed = run(batch_size=2)
  assert evaluated == [(2, 3)]
  assert [(r.max_classes, r.memory_size) for r in resumed] == [(1, 1), (2, 3)]
  saved = json.loads((eval_dir / "results.json").read_text())["results"]
  assert [(r["max_classes"], r["memory_size"]) for r in saved] == [(1, 1), (2, 3)]
  assert not partial.exists()

  whole = run()  # nothing left over: both cells anew
  assert evaluated == [(1, 1), (2, 3)]
  for a, b in zip(resumed, whole):
    np.testing.assert_allclose(a.bound, b.bound, rtol=1e-6)

  # Another K takes nothing from an interrupted K = 8 evaluation, which stays for its rerun.
  with pytest.raises(KeyboardInterrupt):
    run(interrupt_at=2)
  run(num_importance=4)
  assert evaluated == [(1, 1), (2, 3)]
  assert [p.name for p in eval_dir.glob("partial-*.json")] == [partial.name]


@pytest.mark.slow
def test_precision_gaps_are_paired(small_model_and_params):
  """Each dtype's bound is evaluate_grid's in that dtype; the gap is their paired difference."""
  config, model, params = small_model_and_params
  split = _synthetic_split()
  settings = dict(num_importance=6, num_targets=8, batch_size=4, chunk_size=3, seed=0)
  grid = [cells.Cell(1, 2), cells.Cell(2, 3)]
  gaps = precision.precision_gaps(config, params, split, grid, dtype="bfloat16", **settings)
  direct = evaluate.evaluate_grid(model, params, split, grid, **settings)
  low_config = config.copy_and_resolve_references()
  low_config.model.dtype = "bfloat16"
  direct_low = evaluate.evaluate_grid(vma_model.make_model(low_config), params, split, grid,
                                      **settings)
  assert [g.reference_bound for g in gaps] == pytest.approx([r.bound for r in direct],
                                                            abs=1e-9)
  assert [g.bound for g in gaps] == pytest.approx([r.bound for r in direct_low], abs=1e-9)
  for gap in gaps:
    assert gap.dtype == "bfloat16" and gap.reference_dtype == "float32"
    assert gap.num_targets == 8
    assert gap.gap == pytest.approx(gap.bound - gap.reference_bound, abs=1e-9)
    assert 0.0 < gap.max_abs_target_gap < 2.0  # bfloat16 changes every bound, a little
    assert abs(gap.gap) <= gap.max_abs_target_gap
    assert np.isfinite(gap.gap_stderr) and gap.gap_stderr > 0

  with pytest.raises(ValueError, match="two different dtypes"):
    precision.precision_gaps(config, params, split, grid, dtype="float32", **settings)


def test_unknown_dtype_is_a_clear_error(small_model_and_params):
  config, _, params = small_model_and_params
  with pytest.raises(ValueError, match="unknown dtype 'float8'.*bfloat16"):
    precision.precision_gaps(config, params, _synthetic_split(), [(1, 1)], dtype="float8",
                             num_importance=2, num_targets=2, batch_size=2, chunk_size=2,
                             seed=0)
