"""What users and disks do to a workdir: damaged checkpoints, a second run, a read-only or full
disk, a changed config. Each test makes the damage or the mistake, checks the one-line
message, and that nothing earlier was lost.

Runs on mock data with the shrunken config of tests/helpers.py.
"""

import functools
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from helpers import REPO_ROOT, assert_params_equal, child_env, mock_splits, small_config
from vma_jax import checkpoints
from vma_jax import model as vma_model
from vma_jax import state as state_lib
from vma_jax import train
from vma_jax import run as run_lib
from vma_jax import sharding


def _listing(folder):
  """{relative path: bytes} of every file under folder (but the lock file, which each run
  rewrites with its pid)."""
  out = {}
  for root, _, names in os.walk(folder):
    for name in names:
      if name == run_lib.LOCK_FILE:
        continue
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A workdir trained 2 steps (checkpoints 1 and 2), and the parameters of each step."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(small_config(train__num_steps=2), workdir, splits=mock_splits())
  params = {step: checkpoints.restore_params(workdir, step)[0] for step in (1, 2)}
  return workdir, params


@pytest.fixture
def run(trained, tmp_path):
  """A fresh copy of the trained workdir."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  return workdir


def _step_dir(workdir, step):
  return os.path.join(checkpoints.checkpoint_dir(workdir), str(step))


def _largest_params_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "params"))
           for name in names if os.sep + "d" + os.sep in os.path.join(root, name)]
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_params_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def _flip(fraction):
  def flip(step_dir):
    path = _largest_params_file(step_dir)
    with open(path, "r+b") as f:
      data = bytearray(f.read())
      data[int(len(data) * fraction)] ^= 0x10
      f.seek(0)
      f.write(data)
  return flip


def _empty_metadata(step_dir):
  open(os.path.join(step_dir, "params", "_METADATA"), "w").close()


def _delete_config(step_dir):
  os.remove(os.path.join(step_dir, "config", "metadata"))


def _unrecorded(damage):
  """`damage` to a checkpoint whose files' digests were not recorded (a run stopped between
  its save and the record): Orbax's read and the value digests find it."""
  def unrecorded(step_dir):
    os.remove(os.path.join(step_dir, checkpoints.FILES_DIGEST))
    damage(step_dir)
  return unrecorded


# Orbax abandons the other reads of a checkpoint whose files fail to read, and Python reports
# them as they are collected ("Exception ignored in: <coroutine ...>"): Orbax's output, which
# the recorded files' digests spare every checkpoint training completed.
ABANDONED_READS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
DIFFERS = "files differ from those saved"


@ABANDONED_READS
@pytest.mark.parametrize("damage, reason", [
    (_truncate, DIFFERS),
    (_flip(0.1), DIFFERS),
    (_flip(0.5), DIFFERS),
    (_flip(0.9), DIFFERS),
    (_empty_metadata, DIFFERS),
    (_delete_config, "config item does not load"),
    (_unrecorded(_truncate), "do not load"),
    (_unrecorded(_flip(0.5)), "do not load|sha256|NaN"),
    (_unrecorded(_empty_metadata), "do not load"),
], ids=["truncated", "flip10", "flip50", "flip90", "empty_metadata", "no_config",
        "unrecorded_truncated", "unrecorded_flip50", "unrecorded_empty_metadata"])
def test_a_damaged_checkpoint_is_skipped_for_the_newest_intact_one(trained, run, damage, reason,
                                                                    caplog, capfd):
  params = trained[1]
  damage(_step_dir(run, 2))
  damaged_files = _listing(_step_dir(run, 2))

  # Evaluation: step 1, one log line naming step 2 and why; step 2 left exactly as it was.
  capfd.readouterr()
  with caplog.at_level(logging.WARNING):
    restored, step, _ = checkpoints.restore_params(run)
  if reason == DIFFERS:  # found before Orbax reads: nothing else is printed, now or later
    gc.collect()
    assert "Traceback" not in capfd.readouterr().err
  assert step == 1
  assert_params_equal(restored, params[1])
  lines = [r.getMessage() for r in caplog.records if "Skipped the checkpoint" in r.getMessage()]
  assert len(lines) == 1 and "at step 2" in lines[0] and "left in place" in lines[0], lines
  assert __import__("re").search(reason, lines[0]), lines[0]
  assert _listing(_step_dir(run, 2)) == damaged_files
  # Asked for by step, the damage is an error that says what to do.
  with pytest.raises(checkpoints.CheckpointError, match=r"step 2 is damaged.*Choose another step"):
    checkpoints.restore_params(run, step=2)

  # Training's restore (vma_jax.run.Run, as train_and_evaluate calls it): resumes from step 1
  # and moves step 2 aside, never deleting it. (That training then saves step 2 again, bit for
  # bit: test_training_through_a_damaged_checkpoint_saves_its_step_again.)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    restored = _restore_for_training(run)
  assert restored.step == 1
  assert_params_equal(restored.items["params"], params[1])
  assert checkpoints.saved_steps(run) == [1]
  moved = os.path.join(run, checkpoints.DAMAGED_DIR, "2")
  assert _listing(moved) == damaged_files
  lines = [r.getMessage() for r in caplog.records if "Skipped the checkpoint" in r.getMessage()]
  assert len(lines) == 1 and f"moved to {moved}" in lines[0], lines


@functools.cache
def _abstract_state():
  """small_config(train__num_steps=2)'s train state as shapes: traced once for every test."""
  return state_lib.abstract_train_state(small_config(train__num_steps=2), sharding.make_mesh())


def _restore_for_training(workdir):
  """What train_and_evaluate restores in `workdir` for small_config(train__num_steps=2)."""
  config, abstract = small_config(train__num_steps=2), _abstract_state()
  with run_lib.Run(workdir, config) as run:
    return run.restore({"params": abstract.params, "opt_state": abstract.opt_state})


@ABANDONED_READS
def test_training_through_a_damaged_checkpoint_saves_its_step_again(trained, run, caplog):
  """Training resumes from the newest intact checkpoint, moves the damaged one aside and saves
  its step again, bit for bit as the undamaged one."""
  params = trained[1]
  _truncate(_step_dir(run, 2))
  damaged_files = _listing(_step_dir(run, 2))
  with caplog.at_level(logging.WARNING):
    state = train.train_and_evaluate(small_config(train__num_steps=2), run, splits=mock_splits())
  assert_params_equal(state.params, params[2])
  assert_params_equal(checkpoints.restore_params(run)[0], params[2])
  moved = os.path.join(run, checkpoints.DAMAGED_DIR, "2")
  assert _listing(moved) == damaged_files
  lines = [r.getMessage() for r in caplog.records if "Skipped the checkpoint" in r.getMessage()]
  assert len(lines) == 1 and f"moved to {moved}" in lines[0], lines


def _save_step(workdir, step, params, config, *, digest_of=None):
  """A checkpoint at `step` of `params`; with `digest_of`, recording the digest of other
  parameters (as if its files had changed after the save)."""
  manager = checkpoints.make_manager(workdir)
  opt_state = state_lib.make_optimizer(config.optim).init(params)
  if digest_of is None:
    checkpoints.save(manager, step, params, opt_state, config)
  else:
    config_dict = checkpoints.to_dict(config)
    meta = {"model_revision": vma_model.REVISION, "sha256": {
        "params": checkpoints.tree_digest(digest_of),
        "opt_state": checkpoints.tree_digest(opt_state),
        "config": checkpoints._json_digest(config_dict)}}  # pylint: disable=protected-access
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
        config=ocp.args.JsonSave(config_dict), meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  manager.close()


def test_values_that_differ_from_the_saved_digest_or_are_not_finite_are_skipped(trained, run,
                                                                               caplog):
  params, config = trained[1], small_config(train__num_steps=2)
  _save_step(run, 3, jax.tree.map(lambda x: x * np.nan, params[2]), config)
  _save_step(run, 4, jax.tree.map(lambda x: x + 1e-6, params[2]), config, digest_of=params[2])
  with caplog.at_level(logging.WARNING):
    restored, step, _ = checkpoints.restore_params(run)
  assert step == 2
  assert_params_equal(restored, params[2])
  lines = [r.getMessage() for r in caplog.records if "Skipped the checkpoint" in r.getMessage()]
  assert len(lines) == 2
  assert "at step 4" in lines[0] and "do not match the sha256" in lines[0]
  assert "at step 3" in lines[1] and "NaN or infinite" in lines[1]


@ABANDONED_READS
def test_every_checkpoint_damaged_is_one_error_and_deletes_nothing(run):
  for step in (1, 2):
    _truncate(_step_dir(run, step))
  before = _listing(run)
  for attempt in (lambda: checkpoints.restore_params(run),
                  lambda: train.train_and_evaluate(small_config(train__num_steps=3), run,
                                                   splits=mock_splits())):
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"every checkpoint .* is damaged \(step 2: .*; step 1: .*\)") as e:
      attempt()
    assert "\n" not in str(e.value)
  assert _listing(run) == before


# ----------------------------------------------------------------------------------------
# One run per workdir.


def _wait_for(predicate, what, timeout=240):
  deadline = time.monotonic() + timeout
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError(f"timed out waiting for {what}")
    time.sleep(0.05)


def _holder(path):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


@pytest.mark.slow
def test_a_second_run_on_a_workdir_in_use_stops_at_once_naming_the_first(tmp_path):
  workdir, go = tmp_path / "run", tmp_path / "go"
  lock_path = workdir / run_lib.LOCK_FILE
  # The first run waits after its first step until the second has been refused.
  code = textwrap.dedent(f"""
      import os, time
      import helpers
      from vma_jax import train
      batches = train._batches
      def held_after_step_1(*args):
        for i, batch in enumerate(batches(*args)):
          while i == 1 and not os.path.exists({str(go)!r}):
            time.sleep(0.05)
          yield batch
      train._batches = held_after_step_1
      helpers._train_main({str(workdir)!r}, "3")
  """)
  first = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    _wait_for(lambda: (_holder(lock_path) or {}).get("pid") == first.pid
              and (workdir / train.METRICS_FILE).exists(), "the first run to start")
    second = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), "--config=configs/quick.py",
         f"--workdir={workdir}"], cwd=REPO_ROOT, env=child_env(), capture_output=True,
        text=True, timeout=120)
    assert first.poll() is None, "the first run ended before the second started"
  finally:
    go.touch()
    _, first_stderr = first.communicate(timeout=300)
  assert second.returncode == 1, second.stderr[-2000:]
  last = second.stderr.strip().splitlines()[-1]
  assert last.startswith(f"train.py: {workdir} is in use by process {first.pid} on "), last
  assert "Traceback" not in second.stderr and "Training" not in second.stderr

  # The first run was not disturbed: it finished, and its files are its own.
  assert first.returncode == 0, first_stderr[-3000:]
  steps = [r["step"] for r in
           map(json.loads, (workdir / train.METRICS_FILE).read_text().splitlines())]
  assert steps == [1, 2, 3]
  # The first run writes no event files (small_config): the second, refused, wrote none.
  assert not list(workdir.glob("events.out.tfevents.*"))
  assert checkpoints.restore_params(str(workdir))[1] == 3


def test_a_lock_left_by_a_killed_run_does_not_block_the_next(tmp_path):
  code = textwrap.dedent(f"""
      import os, signal
      from vma_jax import run
      run.WorkdirLock({str(tmp_path)!r}).acquire()
      os.kill(os.getpid(), signal.SIGKILL)
  """)
  killed = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=REPO_ROOT)
  assert killed.returncode == -signal.SIGKILL
  assert _holder(tmp_path / run_lib.LOCK_FILE)["pid"] > 0  # the dead run's file remains
  lock = run_lib.WorkdirLock(str(tmp_path))
  lock.acquire()
  try:
    with pytest.raises(run_lib.WorkdirError, match=f"in use by process {os.getpid()}"):
      run_lib.WorkdirLock(str(tmp_path)).acquire()  # and it is a lock: a second is refused
  finally:
    lock.release()


# ----------------------------------------------------------------------------------------
# Read-only and full disks.


def _as_nobody():
  """The command prefix that runs a child without write access to root's files (for tests
  run as root, whom permissions do not stop), or None if this machine cannot."""
  if os.geteuid() != 0:
    return []
  if shutil.which("unshare") and subprocess.run(["unshare", "--user", "true"]).returncode == 0:
    return ["unshare", "--user", "--"]
  return None


def test_an_unwritable_workdir_is_refused_before_any_data_is_loaded(run):
  prefix = _as_nobody()
  if prefix is None:
    pytest.skip("cannot run a child without write access to the workdir here")
  os.chmod(run, 0o555)
  before = _listing(run)
  code = textwrap.dedent(f"""
      import sys
      import helpers
      from vma_jax import run, train
      def loading(*args, **kwargs):
        raise AssertionError("data loaded or functions built before the workdir was checked")
      train._prepare_run = loading
      try:
        train.train_and_evaluate(helpers.small_config(train__num_steps=3), {run!r})
      except run.WorkdirError as e:
        print(e, file=sys.stderr)
        sys.exit(3)
  """)
  try:
    result = subprocess.run(prefix + [sys.executable, "-c", code], env=child_env(),
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  finally:
    os.chmod(run, 0o755)
  assert result.returncode == 3, result.stderr[-3000:]
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith(f"cannot write to {run} (Permission denied)"), message
  assert "give another --workdir" in message
  assert _listing(run) == before


FULL_DISK_SCRIPT = """
import json, os, shutil, sys
import helpers
from vma_jax import checkpoints, run as run_lib, train

disk = sys.argv[1]
run = os.path.join(disk, "run")
report = lambda **kw: print(json.dumps(kw), flush=True)
train.train_and_evaluate(helpers.small_config(train__num_steps=1), run,
                         splits=helpers.mock_splits())
before = checkpoints.tree_digest(checkpoints.restore_params(run)[0])
filler = os.path.join(disk, "filler")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk, then leave room for small files
try:
  while True:
    os.write(fd, b"\\0" * (1 << 16))
except OSError:
  os.close(fd)
os.truncate(filler, os.path.getsize(filler) - 300_000)

def resume():
  try:
    train.train_and_evaluate(helpers.small_config(train__num_steps=3), run,
                             splits=helpers.mock_splits())
    report(failed=False)
  except run_lib.WorkdirError as e:
    report(failed=True, message=str(e))
  params, step, _ = checkpoints.restore_params(run)
  report(step=step, intact=checkpoints.tree_digest(params) == before)

resume()  # the checkpoint that does not fit is not started
print("-- Orbax's own failure below", file=sys.stderr, flush=True)
plenty = shutil.disk_usage(disk)._replace(free=1 << 40)
shutil.disk_usage = lambda path: plenty
resume()  # Orbax starts the checkpoint, and its writes fail
os.remove(filler)  # space again: the same command resumes and finishes
state = train.train_and_evaluate(helpers.small_config(train__num_steps=3), run,
                                 splits=helpers.mock_splits())
report(final_step=checkpoints.restore_params(run)[1])
"""


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device", "/w/checkpoints/2/params/d/0"),
    ValueError('Error writing "/w/checkpoints/2/params/d/0": No space left on device '
               "[os_error_code='28']"),
    RuntimeError("[Errno 28] No space left on device: '/w/checkpoints/2/params/d/0'"),
    # Past the 200 characters of a one-line account, and with no error code.
    ValueError('RESOURCE_EXHAUSTED: Error opening "zarr" driver: Error writing "0.nu.params.'
               'prior_mean.bias/.zarray" in OCDBT database at local file "/w/checkpoints/2/'
               + "a" * 150 + '/ocdbt.process_0/": No space left on device'),
], ids=["os_error", "tensorstore", "as_text", "tensorstore_no_code"])
def test_a_failed_write_names_the_os_reason_however_orbax_reports_it(error):
  message = run_lib.write_failure(error, what="the checkpoint", step=2, workdir="/w",
                                  last_checkpoint=1, path="/w/checkpoints/2")
  assert "\n" not in message
  assert message.startswith("writing the checkpoint at step 2 failed (/w/checkpoints/2"), message
  assert ": No space left on device. Training stopped; the last good checkpoint, step 1" in message


@pytest.mark.slow
def test_a_full_disk_during_a_save_ends_in_one_line_and_keeps_the_last_checkpoint(tmp_path):
  """On a 32 MB tmpfs (mounted in a user namespace): a checkpoint holds about 4 MB."""
  disk = tmp_path / "disk"
  disk.mkdir()
  script = tmp_path / "full_disk.py"
  script.write_text(FULL_DISK_SCRIPT)
  mount = (f"mount -t tmpfs -o size=32m tmpfs {disk} && "
           f"exec {sys.executable} {script} {disk}")
  if subprocess.run(["unshare", "-r", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {disk}"]
                    ).returncode != 0:
    pytest.skip("this machine cannot mount a small tmpfs in a user namespace")
  result = subprocess.run(["unshare", "-r", "-m", "sh", "-c", mount], env=child_env(),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  reports = [json.loads(line) for line in result.stdout.splitlines()]
  assert [r["failed"] for r in reports[0:4:2]] == [True, True], reports
  for report in reports[0:4:2]:
    message = report["message"]
    assert "\n" not in message
    assert message.startswith(
        f"writing the checkpoint at step 2 failed ({disk}/run/checkpoints/2"), message
    assert ": No space left on device" in message, message
    assert ". Training stopped; the last good checkpoint, step 1, is intact in " \
        f"{disk}/run/checkpoints. Free space" in message, message
  assert "MiB are free)" in reports[0]["message"]
  assert reports[1] == reports[3] == {"step": 1, "intact": True}
  assert reports[4] == {"final_step": 3}
  # Refused before Orbax writes, a checkpoint that does not fit leaves no cascade of errors.
  before_orbax = result.stderr.split("-- Orbax's own failure below")[0]
  assert "Traceback" not in before_orbax
  assert len(before_orbax.splitlines()) < 30, before_orbax


# ----------------------------------------------------------------------------------------
# A changed config on resume.


def test_resuming_with_a_changed_config_is_refused_unless_allowed(run, trained):
  before = _listing(run)
  changed = small_config(train__num_steps=3, optim__lr=3e-4, episodes__memory_size=6,
                         episodes__per_class=3)
  with pytest.raises(checkpoints.ConfigChangedError) as error:
    train.train_and_evaluate(changed, run, splits=mock_splits())
  message = str(error.value)
  assert "\n" not in message
  assert ("was trained with another config: episodes.memory_size: 4 there, 6 here; "
          "episodes.per_class: 2 there, 3 here; optim.lr: 0.001 there, 0.0003 here.") in message
  assert "train.num_steps" not in message  # a longer run is not a change of config
  assert "--allow_config_change" in message
  assert _listing(run) == before

  state = train.train_and_evaluate(small_config(train__num_steps=3, optim__lr=3e-4), run,
                                   splits=mock_splits(), allow_config_change=True)
  assert int(state.step) == 3
  history = [json.loads(line) for line in
             open(os.path.join(run, checkpoints.CONFIG_HISTORY_FILE)).read().splitlines()]
  assert len(history) == 1 and history[0]["step"] == 2
  assert history[0]["changed"] == {"optim.lr": [1e-3, 3e-4], "train.num_steps": [2, 3]}
  assert checkpoints.load_config(run).optim.lr == 3e-4
  assert os.path.exists(os.path.join(run, "config.1.json"))  # the earlier config, kept
  assert_params_equal(checkpoints.restore_params(run, step=2)[0], trained[1][2])
