"""Training loop: the step learns, runs resume exactly (also after SIGKILL), errors are clear.

Runs on mock data (random binary images, 10 classes x 20 drawers) with a shrunken config
(tests/helpers.py).
"""

import glob
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import (REPO_ROOT, MockSplit, assert_params_equal, child_env, leaves, mock_splits,
                     small_config)
from vma_jax import checkpoints
from vma_jax import distinct
from vma_jax import errors
from vma_jax import episodes as episodes_lib
from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax import sharding
from vma_jax import summaries
from vma_jax import state as state_lib
from vma_jax import train


def test_train_step_learns_and_reports_metrics():
  config = small_config()
  mesh = sharding.make_mesh()
  state = state_lib.init_train_state(config, jax.random.key(0), mesh)
  data = episodes_lib.EpisodeData.from_split(mock_splits()["train"])
  episodes, _ = train.make_episode_sampler(config, mesh)(data, jax.random.key(1), np.int32(0))
  train_step = train.make_train_step(config, mesh=mesh)
  losses = []
  for step in range(8):  # the same batch: the loss must go down
    state, metrics = train_step(state, episodes, jax.random.fold_in(jax.random.key(2), step))
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 8
  assert losses[-1] < losses[0] - 10.0, losses
  expected = {"loss", "bound", "neg_bound", "address_kl", "address_entropy", "kl_z", "log_px",
              "frac_dummy", "frac_same_class", "distinct_fallback", "grad_norm", "param_norm"}
  assert set(metrics) == expected
  m = {k: float(v) for k, v in metrics.items()}
  assert m["neg_bound"] == pytest.approx(-m["bound"])
  assert m["loss"] == pytest.approx(m["neg_bound"], rel=1e-5)  # the surrogate's value is L_K
  num_slots = config.episodes.memory_size + config.model.num_dummies
  assert m["address_entropy"] + m["address_kl"] == pytest.approx(np.log(num_slots), rel=1e-4)
  assert 0.0 <= m["frac_dummy"] <= 1.0 and 0.0 <= m["frac_same_class"] <= 1.0
  assert m["frac_dummy"] + m["frac_same_class"] <= 1.0
  assert m["log_px"] < 0.0 and m["grad_norm"] > 0.0
  assert m["distinct_fallback"] == 0.0  # B = 4: too few repeats to look for them


@pytest.mark.slow
def test_train_batches_encode_each_distinct_image_once_with_the_same_result():
  # B = 4 episodes of 9 images from 18: 17 distinct in 36 rows. (Below, the 20 rows left
  # without a distinct row run h inside a conditional, whose convolutions XLA:CPU runs
  # slowly: 8x8 images keep that short, and nothing checked depends on the image size.)
  config = small_config(episodes__memory_size=8, data__image_size=8)
  mesh = sharding.make_mesh()
  data = episodes_lib.EpisodeData.from_split(
      MockSplit(0, num_classes=6, per_class=3, image_size=8))
  episodes, sample_key = train.make_episode_sampler(config, mesh)(
      data, jax.random.key(1), np.int32(0))
  rows = episodes.distinct
  assert rows is not None and distinct.fits(rows)
  assert rows.row_U.shape[0] < 0.95 * 4 * 9
  ids_N = np.asarray(vma_model.stack_rows(episodes.x_index_B, episodes.memory_index_BxT))
  np.testing.assert_array_equal(ids_N[np.asarray(rows.row_U)][np.asarray(rows.inverse_N)], ids_N)

  loss_fn = objective.make_loss_fn(config, vma_model.make_model(config))
  params = vma_model.init_params(config, jax.random.key(0))
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss_all, _), grads_all = grad_fn(params, episodes._replace(distinct=None), sample_key)
  # Room for every distinct image, and one row short (h then also runs on the rows left
  # without one).
  short = distinct.find(ids_N, len(np.unique(ids_N)) - 1)
  assert not distinct.fits(short)
  for rows in (rows, short):
    (loss, _), grads = grad_fn(params, episodes._replace(distinct=rows), sample_key)
    np.testing.assert_allclose(loss, loss_all, rtol=1e-5)
    for g, g_all in zip(leaves(grads), leaves(grads_all)):
      np.testing.assert_allclose(g, g_all, rtol=1e-3, atol=1e-5)


def _num_distinct(episodes) -> int:
  return len(np.unique(np.asarray(
      vma_model.stack_rows(episodes.x_index_B, episodes.memory_index_BxT))))


@pytest.mark.slow
def test_batches_that_do_not_fit_train_in_one_program_without_reading_the_device(monkeypatch):
  # B = 4 episodes of 5 images from 12: 9 and 12 distinct images in the 2 batches. (A batch
  # that does not fit runs h inside a conditional: 8x8 images, as above.)
  config = small_config(data__image_size=8)
  mesh = sharding.make_mesh()
  data = episodes_lib.EpisodeData.from_split(
      MockSplit(0, num_classes=4, per_class=3, image_size=8))
  train_key, num_steps = jax.random.key(1), 2
  sample = train.make_episode_sampler(config, mesh)
  counts = [_num_distinct(sample(data, train_key, np.int32(s))[0]) for s in range(num_steps)]
  # U rows for the fewest distinct images: the other batch does not fit.
  capacity_u = min(counts)
  assert counts[0] == capacity_u < counts[1], counts
  monkeypatch.setattr(distinct, "capacity", lambda *args, **kwargs: capacity_u)
  sample = train.make_episode_sampler(config, mesh)
  train_step = train.make_train_step(config, mesh=mesh)
  state = state_lib.init_train_state(config, jax.random.key(0), mesh)

  def read_on_host(array):
    raise AssertionError(f"the training loop read a {array.shape} device array on the host")

  steps, metrics_per_step = [], []
  with monkeypatch.context() as patch:
    # int(), bool() and jax.device_get of a device array wait for it and read it via _value.
    patch.setattr(type(jnp.zeros(())), "_value", property(read_on_host))
    for step, episodes, sample_key in train._batches(sample, data, train_key, 0, num_steps):
      assert episodes.distinct.row_U.shape == (capacity_u,)
      state, metrics = train_step(state, episodes, sample_key)
      steps.append(step)
      metrics_per_step.append(metrics)
  assert steps == list(range(num_steps))
  assert train_step._cache_size() == 1  # pylint: disable=protected-access
  assert [float(m["distinct_fallback"]) for m in metrics_per_step] == [
      float(count > capacity_u) for count in counts]
  assert np.isfinite([float(m["loss"]) for m in metrics_per_step]).all()
  assert list(train._batches(sample, data, train_key, num_steps, num_steps)) == []


def test_optimizer_clipping():
  config = small_config(optim__grad_clip_norm=1.0)
  tx = state_lib.make_optimizer(config.optim)
  grads = {"w": jnp.full((4,), 100.0)}
  updates, _ = tx.update(grads, tx.init(grads))
  # Adam's first update is lr * sign(g) whatever the scale; clipping must not change it.
  np.testing.assert_allclose(updates["w"], -config.optim.lr * np.ones(4), rtol=1e-4)
  with pytest.raises(ValueError, match="unknown optimiser"):
    state_lib.make_optimizer(small_config(optim__name="sgd").optim)


def _event_tags_by_step(workdir) -> dict[int, set[str]]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tags = {}
  for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.setdefault(event.step, set()).update(v.tag for v in event.summary.value)
  return tags


@pytest.mark.slow
def test_train_resume_and_workdir(tmp_path, caplog):
  splits = mock_splits()
  straight = tmp_path / "straight"
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(small_config(train__num_steps=2, train__tensorboard=True),
                             str(straight), splits=splits)
  # One line per logged step, the run's own: CLU's logging writer would add "[1] train/..."
  # lines repeating the scalars, and the hyperparameters.
  lines = [r.getMessage() for r in caplog.records]
  assert [m.split(":")[0] for m in lines if m.startswith("step ")] == ["step 1/2", "step 2/2"]
  assert not [m for m in lines if m.startswith(("[1]", "[2]", "[Hyperparameters]"))], lines
  # The scalars still reach TensorBoard.
  tags = _event_tags_by_step(str(straight))
  assert {"train/loss", "train/neg_bound"} <= tags[1] and {"train/loss"} <= tags[2]

  resumed = tmp_path / "resumed"
  train.train_and_evaluate(small_config(train__num_steps=1, train__tensorboard=True), str(resumed),
                           splits=splits)
  # The same command with a longer run continues from step 1 (config.json keeps history).
  config = small_config(train__num_steps=2, train__validate_every=2, train__image_every=2,
                        train__tensorboard=True)
  state = train.train_and_evaluate(config, str(resumed), splits=splits)
  assert int(state.step) == 2

  params_a, step_a, _ = checkpoints.restore_params(str(straight))
  params_b, step_b, config_b = checkpoints.restore_params(str(resumed))
  assert step_a == step_b == 2
  assert_params_equal(params_a, params_b)
  assert_params_equal(state.params, params_b)
  assert config_b.train.num_steps == 2 and config_b.model.latent_dim == 8

  assert checkpoints.load_config(str(resumed)).train.num_steps == 2
  assert (resumed / "config.1.json").exists()  # the first start's config, kept
  records = summaries.read_metrics(str(resumed / train.METRICS_FILE))
  train_steps = [r["step"] for r in records if "train/loss" in r]
  assert train_steps == [1, 2]
  valid = [r for r in records if "valid/neg_bound" in r]
  assert [r["step"] for r in valid] == [2] and 0 < valid[0]["valid/neg_bound"] < 1000
  assert all(np.isfinite(r["train/steps_per_sec"]) for r in records if "train/loss" in r)
  assert (resumed / train.IMAGE_DIR / "few_shot_00000002.png").exists()
  assert list(resumed.glob("events.out.tfevents.*"))

  # Once finished, the same command has nothing to do and changes nothing.
  train.train_and_evaluate(config, str(resumed), splits=splits)
  assert_params_equal(checkpoints.restore_params(str(resumed))[0], params_b)


@pytest.mark.slow
def test_resume_with_other_model_is_an_error(tmp_path):
  splits = mock_splits()
  train.train_and_evaluate(small_config(train__num_steps=1), str(tmp_path), splits=splits)
  with pytest.raises(checkpoints.CheckpointError, match=r"model\.latent_dim: 8 there, 16 here"):
    train.train_and_evaluate(small_config(train__num_steps=2, model__latent_dim=16),
                             str(tmp_path), splits=splits)
  # Nothing was overwritten: the old config and checkpoint are intact.
  assert checkpoints.load_config(str(tmp_path)).model.latent_dim == 8
  assert checkpoints.restore_params(str(tmp_path))[1] == 1
  # Switching gradient clipping on changes the optimiser state's structure.
  with pytest.raises(checkpoints.CheckpointError, match="opt_state"):
    train.train_and_evaluate(small_config(train__num_steps=2, optim__grad_clip_norm=1.0),
                             str(tmp_path), splits=splits)
  assert checkpoints.load_config(str(tmp_path)).optim.grad_clip_norm == 0.0
  assert not (tmp_path / "config.1.json").exists()


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory) -> str:
  """A workdir of small_config trained one step (copied by each test that changes it)."""
  workdir = str(tmp_path_factory.mktemp("one_step") / "run")
  train.train_and_evaluate(small_config(train__num_steps=1), workdir, splits=mock_splits())
  return workdir


@pytest.mark.parametrize("overrides, message", [
    (dict(episodes__composition="mixed"), "unknown episodes.composition 'mixed'"),
    (dict(episodes__memory_size=5),
     "config.episodes: memory_size=5 must be a multiple of per_class=2"),
    (dict(objective__baseline="harmonic"),
     r"unknown VIMCO baseline 'harmonic' \(config.objective.baseline\)"),
    (dict(objective__num_importance=1),
     r"need K >= 2 samples, got K = 1 \(config.objective.num_importance\)"),
    (dict(optim__name="sgd"), r"unknown optimiser 'sgd' \(config.optim.name\)"),
    (dict(model__param_init="xavier"),
     "unknown init 'xavier': config.model.param_init must be one of"),
    (dict(validation__memory_size=30, train__validate_every=1),
     r"config.validation: cell \(C=2, T=30\) is impossible"),
])
def test_config_that_cannot_run_is_refused_before_the_workdir_is_touched(
    tmp_path, one_step_run, overrides, message):
  splits = mock_splits()
  shutil.copytree(one_step_run, tmp_path / "run")
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
  for workdir in (tmp_path / "fresh", tmp_path / "run"):  # a new run, and a resumed one
    with pytest.raises(errors.RefusedConfig, match=message) as error:
      train.train_and_evaluate(small_config(train__num_steps=2, **overrides), str(workdir),
                               splits=splits)
    assert "nothing was written to the workdir" in str(error.value)
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
  assert checkpoints.load_config(str(tmp_path / "run")).train.num_steps == 1


def test_a_bug_raised_while_tracing_is_no_config_error_and_keeps_its_traceback(
    tmp_path, monkeypatch):
  def broken_objective(*args, **kwargs):
    raise ValueError("einsum(): operands 0 and 1 do not match")

  monkeypatch.setattr(train.objective, "vimco_surrogate", broken_objective)
  with pytest.raises(ValueError, match="operands 0 and 1 do not match") as error:
    train.train_and_evaluate(small_config(), str(tmp_path / "run"), splits=mock_splits())
  assert not isinstance(error.value, errors.ConfigError)
  assert error.traceback[-1].name == "broken_objective"
  assert not (tmp_path / "run").exists()


def save_initial_checkpoint(workdir, config, saved_config=None, step=1):
  """Writes `workdir/config.json` and a checkpoint at `step` of `config`'s fresh parameters,
  both with `saved_config` (default: `config`) as their config; returns the parameters."""
  saved_config = config if saved_config is None else saved_config
  params = vma_model.init_params(config, jax.random.key(0))
  checkpoints.save_config(workdir, saved_config)
  manager = checkpoints.make_manager(workdir)
  checkpoints.save(manager, step, params, state_lib.make_optimizer(config.optim).init(params),
                   saved_config)
  manager.wait_until_finished()
  manager.close()
  return params


def save_checkpoint_of_revision(workdir, config, revision, saved_config=None):
  """A checkpoint at step 1 as `checkpoints.save` writes it, but recording `revision` (None:
  no `meta` item, as versions before revisions were recorded wrote them)."""
  saved_config = checkpoints.to_dict(config if saved_config is None else saved_config)
  params = vma_model.init_params(config, jax.random.key(0))
  checkpoints.save_config(workdir, saved_config)
  items = dict(params=ocp.args.StandardSave(params),
               opt_state=ocp.args.StandardSave(state_lib.make_optimizer(config.optim).init(params)),
               config=ocp.args.JsonSave(saved_config))
  if revision is not None:
    items["meta"] = ocp.args.JsonSave({"model_revision": revision})
  manager = checkpoints.make_manager(workdir)
  manager.save(1, args=ocp.args.Composite(**items))
  manager.wait_until_finished()
  manager.close()


@pytest.mark.slow
def test_a_fresh_run_traces_its_initial_state_once(tmp_path, monkeypatch):
  """The shapes that a checkpoint is restored onto and the fresh state come from one trace
  of create_train_state (the traced function runs once per trace)."""
  traces = []
  create = state_lib.create_train_state
  monkeypatch.setattr(state_lib, "create_train_state",
                      lambda config, key: traces.append(key) or create(config, key))
  state = train.train_and_evaluate(small_config(train__num_steps=1), str(tmp_path),
                                   splits=mock_splits())
  assert len(traces) == 1 and int(state.step) == 1


def test_saved_checkpoints_record_the_model_revision(tmp_path):
  config = small_config()
  save_initial_checkpoint(str(tmp_path), config)
  with open(tmp_path / checkpoints.CHECKPOINT_DIR / "1" / "meta" / "metadata") as f:
    assert json.load(f)["model_revision"] == vma_model.REVISION


@pytest.mark.parametrize("revision, message", [
    (None, r"records no model revision: .* early version .* new --workdir"),
    (vma_model.REVISION - 1, r"revision 1 .* earlier version .* no ReLU after its fc2 .* "
                             "new --workdir"),
    (vma_model.REVISION + 1, r"newer version .* Update vma_jax"),
])
def test_checkpoint_of_another_model_revision_is_refused(tmp_path, revision, message):
  """Parameters of another revision (same shapes, another function: before revision 2, a
  ReLU after the decoder's fc2), or of no recorded revision, are neither evaluated nor
  resumed, and stay intact."""
  config = small_config()
  saved = checkpoints.to_dict(config)
  save_checkpoint_of_revision(str(tmp_path), config, revision)
  with pytest.raises(checkpoints.CheckpointError, match=message):
    checkpoints.restore_params(str(tmp_path))
  with pytest.raises(checkpoints.CheckpointError, match=message):
    train.train_and_evaluate(small_config(train__num_steps=2), str(tmp_path),
                             splits=mock_splits())
  assert checkpoints.to_dict(checkpoints.load_config(str(tmp_path))) == saved
  assert sorted(os.listdir(tmp_path / checkpoints.CHECKPOINT_DIR)) == ["1"]


@pytest.mark.slow
def test_nonfinite_state_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  splits = mock_splits()
  train.train_and_evaluate(small_config(train__num_steps=2), str(tmp_path), splits=splits)
  good = checkpoints.restore_params(str(tmp_path))[0]
  # A NaN learning rate turns the parameters into NaN at the first step of the resumed run.
  config = small_config(train__num_steps=4, optim__lr=float("nan"))
  with pytest.raises(train.NonFiniteLossError, match=r"at step 3 .*param_norm = nan"):
    train.train_and_evaluate(config, str(tmp_path), splits=splits, allow_config_change=True)
  params, step, _ = checkpoints.restore_params(str(tmp_path))
  assert step == 2
  assert_params_equal(params, good)


def test_restore_params_errors(tmp_path):
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
    checkpoints.restore_params(str(tmp_path))
  with pytest.raises(checkpoints.CheckpointError, match="Train first"):
    checkpoints.load_config(str(tmp_path))
  checkpoints.save_config(str(tmp_path), small_config())
  (tmp_path / checkpoints.CHECKPOINT_DIR).mkdir()
  with pytest.raises(checkpoints.CheckpointError, match="Train first"):
    checkpoints.restore_params(str(tmp_path))
  # save_config refuses to replace the config of another model.
  with pytest.raises(checkpoints.CheckpointError, match="different model"):
    checkpoints.save_config(str(tmp_path), small_config(model__embed_dim=32))


def test_orbax_logs_are_filtered_within_a_run_and_a_restore_only(tmp_path):
  """Training and restoring log no Orbax INFO lines (and not that a read-only restore is
  read-only); other modules' INFO lines and Orbax's warnings still pass. The filter is
  installed for those calls only: outside them, Orbax's lines reach the loggers as sent."""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  records = []

  class Keep(logging.Handler):

    def emit(self, record):
      records.append(record)

  logger = logging.getLogger("absl")
  handler, level = Keep(), logger.level  # restored as it was, not as absl's verbosity
  logger.addHandler(handler)
  absl_logging.set_verbosity(absl_logging.INFO)
  orbax_file = os.path.join(os.path.dirname(checkpoints.ocp.__file__), "checkpoint_manager.py")
  hooks = (sys.excepthook, sys.unraisablehook)

  def orbax_record(level, message):
    logger.handle(logger.makeRecord("absl", level, orbax_file, 1, message, (), None))

  try:
    state = train.train_and_evaluate(small_config(train__num_steps=1), str(tmp_path),
                                     splits=mock_splits())
    restored, step, _ = checkpoints.restore_params(str(tmp_path))
    absl_logging.info("a line of ours")
    with checkpoints.orbax_logs():
      orbax_record(logging.WARNING, "disk full")
      orbax_record(logging.INFO, "saving")
    orbax_record(logging.INFO, "outside")
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  assert step == 1
  assert_params_equal(restored, state.params)
  from_orbax = [r for r in records if f"{os.sep}orbax{os.sep}" in r.pathname]
  assert [r.getMessage() for r in from_orbax] == ["disk full", "outside"]
  assert "a line of ours" in [r.getMessage() for r in records]
  assert not logger.filters and not logging.getLogger("asyncio").filters
  assert (sys.excepthook, sys.unraisablehook) == hooks


def _train_command(workdir, num_steps):
  return [sys.executable, str(REPO_ROOT / "tests" / "helpers.py"), "train", str(workdir),
          str(num_steps)]


def _is_checkpoint(path):
  return path.name.isdigit() and (path / "_CHECKPOINT_METADATA").exists()


@pytest.mark.slow
def test_sigkill_at_any_moment_then_restart_is_bit_identical(tmp_path):
  num_steps = 8
  env = child_env()
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  # The uninterrupted run in this process: the same program as the child's (one CPU device).
  train.train_and_evaluate(small_config(train__num_steps=num_steps), str(straight),
                           splits=mock_splits())

  process = subprocess.Popen(_train_command(killed, num_steps), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 300
  checkpoint_dir = killed / checkpoints.CHECKPOINT_DIR
  while time.monotonic() < deadline and process.poll() is None:
    if checkpoint_dir.is_dir() and any(_is_checkpoint(p) for p in checkpoint_dir.iterdir()):
      break
    time.sleep(0.05)
  time.sleep(0.3)  # into the next steps (and, likely, the next asynchronous save)
  assert process.poll() is None, "the run ended before it could be killed: make it longer"
  process.send_signal(signal.SIGKILL)
  assert process.wait() == -signal.SIGKILL
  finished = sorted(int(p.name) for p in checkpoint_dir.iterdir() if _is_checkpoint(p))
  assert finished and finished[-1] < num_steps

  # A half-written checkpoint of a later step, as a kill during a save leaves it: Orbax
  # writes into a temporary folder, which is never taken for a checkpoint.
  partial = checkpoint_dir / f"{finished[-1] + 1}.orbax-checkpoint-tmp-1234"
  (partial / "params").mkdir(parents=True, exist_ok=True)
  (partial / "params" / "garbage").write_bytes(b"\0" * 10)

  result = subprocess.run(_train_command(killed, num_steps), env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resumed from step {finished[-1]}" in result.stderr

  params_a, step_a, _ = checkpoints.restore_params(str(straight))
  params_b, step_b, _ = checkpoints.restore_params(str(killed))
  assert step_a == step_b == num_steps
  assert_params_equal(params_a, params_b)


def test_metrics_log_survives_a_torn_last_line(tmp_path):
  log = summaries.MetricsLog(str(tmp_path / "m.jsonl"))
  log.write(1, {"a": 1.0, "b": float("nan")})
  log.write(2, {"a": 2.0})
  with open(tmp_path / "m.jsonl", "a") as f:
    f.write('{"step": 3, "a"')  # a torn last line, as a kill mid-write leaves it
  assert summaries.read_metrics(str(tmp_path / "m.jsonl")) == [
      {"step": 1, "a": 1.0, "b": "nan"}, {"step": 2, "a": 2.0}]


def _train_in_child(workdir, *, config_overrides: str, prelude: str = "", epilogue: str = ""):
  """Trains `small_config(<config_overrides>)` on mock data in a child process."""
  code = (f"{prelude}import helpers\n"
          "from vma_jax import train\n"
          f"train.train_and_evaluate(helpers.small_config({config_overrides}), "
          f"{str(workdir)!r}, splits=helpers.mock_splits())\n{epilogue}")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_training_without_tensorflow_or_clu(tmp_path):
  """On a host without TensorFlow or CLU (a bare accelerator host), a run still trains,
  checkpoints, and writes metrics.jsonl and the PNG grids; only TensorBoard files are missing."""
  workdir = tmp_path / "run"
  result = _train_in_child(
      workdir, config_overrides="train__image_every=2, train__tensorboard=True",
      prelude=("import sys\n"
               "for name in ('tensorflow', 'clu', 'tensorboard'):\n"
               "  sys.modules[name] = None  # as if not installed\n"))
  assert "No TensorBoard summaries" in result.stderr
  assert [r["step"] for r in summaries.read_metrics(str(workdir / "metrics.jsonl"))] == [1, 2]
  assert [p.name for p in (workdir / "images").iterdir()] == ["few_shot_00000002.png"]
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if _is_checkpoint(p)) == [
      "1", "2"]
  assert not list(workdir.glob("events.out.tfevents*"))


@pytest.mark.slow
def test_training_without_event_files_never_imports_tensorflow(tmp_path):
  """With config.train.tensorboard off, a run (data given, as from a prepared cache) trains,
  validates and draws its grids without importing TensorFlow, though it is installed."""
  pytest.importorskip("tensorflow")
  workdir = tmp_path / "run"
  result = _train_in_child(
      workdir, config_overrides=("train__tensorboard=False, train__image_every=2, "
                                 "train__validate_every=2"),
      epilogue=("import sys\n"
                "print('modules:', sorted(m for m in ('tensorflow', 'clu', 'tensorboard')"
                " if m in sys.modules))\n"))
  assert "modules: []" in result.stdout
  assert "No TensorBoard summaries" not in result.stderr
  assert [p.name for p in (workdir / "images").iterdir()] == ["few_shot_00000002.png"]
  assert not list(workdir.glob("events.out.tfevents*"))
  records = summaries.read_metrics(str(workdir / "metrics.jsonl"))
  assert "valid/address_kl" in records[-1] and "valid/neg_bound" in records[-1]


@pytest.mark.slow
def test_progress_bar_starts_after_the_first_step(tmp_path, monkeypatch):
  """The bar is made once the first step has run (and compiled): its rate and time left
  leave the compilation out. Resumed, it starts from the step after the checkpoint's."""
  bars = []

  class FakeBar:

    def __init__(self, num_steps, done):
      self.num_steps, self.initial, self.updates, self.closed = num_steps, done, 0, False
      bars.append(self)

    def update(self, n):
      self.updates += n

    def close(self):
      self.closed = True

  monkeypatch.setattr(summaries, "progress_bar", FakeBar)
  train.train_and_evaluate(small_config(train__num_steps=3), str(tmp_path), splits=mock_splits())
  train.train_and_evaluate(small_config(train__num_steps=5), str(tmp_path), splits=mock_splits())
  assert [(b.num_steps, b.initial, b.updates, b.closed) for b in bars] == [
      (3, 1, 2, True), (5, 4, 1, True)]
