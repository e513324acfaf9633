"""Two processes of 2 CPU devices each train and evaluate as one process of 4 devices.

The real entry points run as subprocesses: train.py and evaluate.py as two processes joined
over 127.0.0.1 (`vma_jax.distributed`, gloo collectives), and as one process alone, on a
tiny configs/quick.py run and the real Omniglot splits.
"""

import glob
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import helpers

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

from vma_jax import checkpoints
from vma_jax import distributed
from vma_jax import summaries

# configs/quick.py with tiny heads (as tests/helpers.py's small_config): the same paths, and
# compiles of seconds.
TRAIN_FLAGS = ("--config=configs/quick.py", "--config.model.latent_dim=8",
               "--config.model.embed_dim=16", "--config.model.match_dim=16",
               "--config.train.num_steps=2",
               "--config.train.batch_size=8", "--config.train.log_every=1",
               "--config.train.checkpoint_every=2", "--config.train.validate_every=0",
               "--config.train.image_every=0", "--config.validation.batch_size=8")
EVAL_FLAGS = ("--cells=1:2", "--num_importance=4", "--num_targets=8", "--batch_size=4")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(script: str, args, *, num_processes: int, cpu_devices: int, log_dir) -> list[str]:
  """Runs `python script args` as `num_processes` processes of `cpu_devices` CPU devices each
  (joined by the three flags if more than one); returns their logs, asserting they succeed."""
  env = {k: v for k, v in os.environ.items()
         if k != "XLA_FLAGS" and not k.startswith(("VMA_COORDINATOR", "VMA_NUM_PROC",
                                                   "VMA_PROCESS", "SLURM_", "OMPI_"))}
  env["JAX_PLATFORMS"] = "cpu"
  env["XLA_FLAGS"] = helpers.SUITE_XLA_FLAGS  # no forced device count: --cpu_devices
  command = [sys.executable, script, *args, f"--cpu_devices={cpu_devices}"]
  if num_processes > 1:
    command += [f"--coordinator_address=127.0.0.1:{_free_port()}",
                f"--num_processes={num_processes}"]
  os.makedirs(log_dir, exist_ok=True)
  paths = [os.path.join(log_dir, f"{i}.log") for i in range(num_processes)]
  processes = []
  for i, path in enumerate(paths):
    ids = [f"--process_id={i}"] if num_processes > 1 else []
    with open(path, "w") as log:  # files, not pipes: a full pipe would stall the group
      processes.append(subprocess.Popen(command + ids, cwd=REPO_ROOT, env=env,
                                        stdout=log, stderr=subprocess.STDOUT))
  try:
    codes = [p.wait(timeout=600) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  logs = [pathlib.Path(path).read_text() for path in paths]
  for i, (code, log) in enumerate(zip(codes, logs)):
    assert code == 0, f"{script} process {i} exited with {code}:\n{log[-4000:]}"
  return logs


def test_a_single_process_starts_no_process_group(monkeypatch):
  for name in (distributed.ADDRESS_ENV, distributed.NUM_PROCESSES_ENV,
               distributed.PROCESS_ID_ENV, "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
               "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.cluster_process_count() == 1
  assert not distributed.initialize()
  assert not distributed.initialize(num_processes=1)
  monkeypatch.setenv(distributed.NUM_PROCESSES_ENV, "1")
  assert not distributed.initialize()


def test_several_processes_need_the_address_and_an_index(monkeypatch):
  for name in (distributed.ADDRESS_ENV, distributed.PROCESS_ID_ENV, "JAX_COORDINATOR_ADDRESS",
               "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv(distributed.NUM_PROCESSES_ENV, "2")
  with pytest.raises(ValueError, match="--coordinator_address=HOST:PORT"):
    distributed.initialize(process_id=0)
  with pytest.raises(ValueError, match="--process_id=0..1"):
    distributed.initialize(coordinator_address="127.0.0.1:1234")
  monkeypatch.delenv(distributed.NUM_PROCESSES_ENV)
  with pytest.raises(ValueError, match="go with --num_processes=N"):
    distributed.initialize(coordinator_address="127.0.0.1:1234", process_id=0)
  monkeypatch.setenv(distributed.NUM_PROCESSES_ENV, "two")
  with pytest.raises(ValueError, match="is not an integer"):
    distributed.initialize()


def test_srun_of_several_tasks_is_a_cluster(monkeypatch):
  """The environment of task 1 of `srun --ntasks=2` (what JAX's SLURM detection reads)."""
  monkeypatch.delenv("OMPI_MCA_orte_hnp_uri", raising=False)
  for name, value in (("SLURM_JOB_ID", "17"), ("SLURM_STEP_NODELIST", "node[001-002]"),
                      ("SLURM_NTASKS", "2"), ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "0")):
    monkeypatch.setenv(name, value)
  assert distributed.cluster_process_count() == 2
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert distributed.cluster_process_count() == 1


@pytest.mark.slow
def test_two_processes_train_and_evaluate_as_one(tmp_path, archive_dir, omniglot_data_dir,
                                                 omniglot_train, omniglot_test):
  """Six processes (train.py and evaluate.py, alone and as two joined ones), each starting
  JAX and compiling or loading its programs: about 45 s on 2 cores."""
  # The splits' numpy caches exist (the fixtures above prepared them): the processes only
  # read them.
  del omniglot_train, omniglot_test
  data_flags = (f"--config.data.archive_dir={archive_dir}",
                f"--config.data.data_dir={omniglot_data_dir}")
  workdirs = {}
  for name, num_processes, cpu_devices in (("one", 1, 4), ("two", 2, 2)):
    workdir = tmp_path / name
    # The one-process run is the numbers' reference: no event files, no TensorFlow to import.
    quiet = ["--config.train.tensorboard=False"] if name == "one" else []
    logs = _run("train.py", [*TRAIN_FLAGS, *data_flags, *quiet, f"--workdir={workdir}"],
                num_processes=num_processes, cpu_devices=cpu_devices,
                log_dir=tmp_path / f"train-{name}")
    for log in logs:  # every process is one of the same 4-device program
      assert f"on 4 device(s) of {num_processes} process(es)" in log, log[-3000:]
    _run("evaluate.py", [f"--workdir={workdir}", *EVAL_FLAGS], num_processes=num_processes,
         cpu_devices=cpu_devices, log_dir=tmp_path / f"eval-{name}")
    workdirs[name] = workdir

  # Process 0 alone wrote the files: one line per step, one event file, one results file.
  metrics = {name: summaries.read_metrics(str(w / "metrics.jsonl"))
             for name, w in workdirs.items()}
  assert [r["step"] for r in metrics["two"]] == [r["step"] for r in metrics["one"]] == [1, 2]
  events = {name: glob.glob(str(w / "events.out.tfevents*")) for name, w in workdirs.items()}
  assert not events["one"] and len(events["two"]) <= 1
  eval_dir = workdirs["two"] / "eval"
  written = sorted(os.listdir(eval_dir))
  assert [n for n in written if not n.startswith("events.out.tfevents")] == [
      "bound_vs_T.png", "kl_vs_T.png", "results.csv", "results.json", "results.md"]
  assert len(written) - 5 <= 1  # the figures' image summaries: one event file at most
  results = {name: json.loads((w / "eval" / "results.json").read_text())
             for name, w in workdirs.items()}
  assert results["two"]["meta"]["num_processes"] == 2
  assert results["two"]["meta"]["num_devices"] == results["one"]["meta"]["num_devices"] == 4

  # The same episodes and samples on the same 4 devices; only the reductions over the batch
  # are split differently (partial sums per process, then gloo's all-reduce), so float32 sums
  # round differently. Measured after the 2 Adam steps (lr 1e-3): at the full-size heads, all
  # parameters within 3e-6 except the address network's ("match"), within 9.2e-5 (at these
  # tiny heads, all within 1.8e-6). Its gradients are tiny while q(a|x,M) is uniform, so
  # their rounding is a large part of them, and Adam divides it by their size. A lost shard
  # or wrong key changes the updates by ~lr = 1e-3, and the step-2 metrics. Hence 2.5e-4 for
  # the parameters. The metrics (measured: within 1.1e-6 relative; address_kl, ~0, within
  # 6e-8) and the bound (1.5e-8 relative) to 1e-5.
  params = {name: jax.device_get(checkpoints.restore_params(str(w))[0])
            for name, w in workdirs.items()}
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params["one"])[0],
                          jax.tree.leaves(params["two"])):
    np.testing.assert_allclose(b, a, rtol=0, atol=2.5e-4, err_msg=jax.tree_util.keystr(path))
  for one, two in zip(metrics["one"], metrics["two"]):
    for name in one.keys() - {"step", "train/steps_per_sec"}:
      np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
  (cell_one,), (cell_two,) = results["one"]["results"], results["two"]["results"]
  assert cell_two["num_targets"] == cell_one["num_targets"] == 8
  np.testing.assert_allclose(cell_two["bound"], cell_one["bound"], rtol=1e-5)
