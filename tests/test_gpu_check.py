"""benchmarks/gpu_check.sh: what it carries and installs, how it reads a training run, and its
dry run (every phase at tiny sizes on the CPU, the programs lowered for CUDA) into one JSON."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from benchmarks import gpu_check
from helpers import write_mock_cache
from vma_jax import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What every entry of benchmarks/run.py holds.
BENCH_KEYS = ("name", "device", "median_s", "min_s", "max_s", "peak_rss_mb", "gflops_per_s",
              "matmul_gflops_per_s", "batch", "memory", "samples")


def test_dry_run_xla_flags_are_added_once():
  flags = gpu_check.DRY_RUN_XLA_FLAGS
  assert gpu_check.with_dry_run_xla_flags(None) == flags
  assert gpu_check.with_dry_run_xla_flags("--a=1") == f"--a=1 {flags}"
  assert gpu_check.with_dry_run_xla_flags(f"{flags} --a=1") == f"{flags} --a=1"


def test_wheels_to_install_only_for_missing_modules(tmp_path):
  for name in ("ml_collections-1.1.0-py3-none-any.whl",
               "vma_gpu_check_absent-0.1-py3-none-any.whl"):
    (tmp_path / name).write_bytes(b"")
  required = (("ml_collections", "ml-collections"),  # installed here: left alone
              ("vma_gpu_check_absent", "vma-gpu-check-absent"),
              ("vma_gpu_check_no_wheel", "vma-gpu-check-no-wheel"))
  chosen, no_wheel = gpu_check.wheels_to_install(str(tmp_path), required)
  assert chosen == {"vma-gpu-check-absent":
                    str(tmp_path / "vma_gpu_check_absent-0.1-py3-none-any.whl")}
  assert no_wheel == ["vma-gpu-check-no-wheel"]


def test_prepare_carries_the_cache_and_install_checks_it(tmp_path):
  write_mock_cache(tmp_path / "tfds")
  carry = tmp_path / "carry"
  manifest = gpu_check.prepare(str(carry), str(tmp_path / "tfds"), wheels=False)
  for split in gpu_check.SPLITS:
    carried = data.cache_path(str(carry / "data"), split, 26)
    assert data.load_omniglot(split, data_dir=str(carry / "data")).cache_path == carried
  assert set(manifest["files"]) == {
      os.path.relpath(data.cache_path(str(carry / "data"), s, 26), carry)
      for s in gpu_check.SPLITS}
  assert set(gpu_check.verify_carry(str(carry)).values()) == {"ok"}
  damaged = data.cache_path(str(carry / "data"), "test", 26)
  with open(damaged, "ab") as f:
    f.write(b"\0")
  assert gpu_check.verify_carry(str(carry))[os.path.relpath(damaged, carry)] != "ok"


def test_prepare_without_the_cache_says_what_to_do(tmp_path):
  with pytest.raises(SystemExit, match="python -m vma_jax.data"):
    gpu_check.prepare(str(tmp_path / "carry"), str(tmp_path / "empty"), wheels=False)


def test_train_summary_times_the_steps_after_the_first_interval(tmp_path):
  rows = [(50, 1.0), (100, 40.0), (150, 50.0), (200, 25.0)]  # step, steps/s
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step, rate in rows:
      f.write(json.dumps({"step": step, "train/steps_per_sec": rate,
                          "train/neg_bound": 1000.0 - step}) + "\n")
    f.write(json.dumps({"step": 200, "valid/neg_bound": 300.0}) + "\n")
  os.makedirs(tmp_path / "checkpoints" / "200")
  summary = gpu_check.train_summary(str(tmp_path))
  assert summary["step_s"] == pytest.approx(1 / 40.0)
  assert (summary["step_s_min"], summary["step_s_max"]) == (1 / 50.0, 1 / 25.0)
  assert summary["steps_timed"] == 150
  assert summary["first_interval_s"] == pytest.approx(50.0)
  assert summary["first_interval_excess_s"] == pytest.approx(50.0 - 50 / 40.0)
  assert summary["final_neg_bound"] == 800.0  # training's, not validation's
  assert summary["checkpoint_steps"] == [200]


def test_without_a_gpu_the_check_skips_the_rest_and_still_writes_its_json(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, VMA_GPU_CHECK_CARRY=str(tmp_path / "none"),
             VMA_GPU_CHECK_WORK=str(tmp_path / "work"), JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
  assert report["mode"] == "gpu" and not report["all_finished"]
  statuses = {name: phase["status"] for name, phase in report["phases"].items()}
  assert statuses.pop("install") == "finished"
  assert statuses.pop("probe") == "failed" and "not a GPU" in report["phases"]["probe"]["log_tail"]
  assert set(statuses) == {f"bench_{d}_{e}" for d in gpu_check.DTYPES
                           for e in gpu_check.ENTRIES} | {"train", "precision"}
  assert set(statuses.values()) == {"skipped"}
  assert report["summary"] == {} and report["train"] is None and report["precision"] is None


@pytest.mark.slow
def test_dry_run_runs_every_phase_into_one_json(tmp_path):
  """The whole check as a GPU host runs it: about a dozen processes (each phase its own, as
  there), the full-size model's step and bound compiled in float32 and bfloat16, a training
  run and its precision check. About a minute on 2 cores, with XLA's optimisations off and
  the dry run's XLA flags; each process's start (imports, tracing the full-size model) is
  most of it."""
  write_mock_cache(tmp_path / "tfds")
  carry, out, work = tmp_path / "carry", tmp_path / "out", tmp_path / "work"
  env = dict(os.environ, PYTHON=sys.executable, VMA_GPU_CHECK_CARRY=str(carry),
             VMA_GPU_CHECK_WORK=str(work),
             # As tests/test_train.py: a rerun loads the CPU programs instead of compiling.
             JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(),
                                                    "vma_jax_test_compilation_cache"))
  env.pop("TFDS_DATA_DIR", None)  # the data comes from the carried folder
  subprocess.run(["bash", "benchmarks/gpu_check.sh", "--prepare", str(carry), "--data-dir",
                  str(tmp_path / "tfds"), "--no-wheels"], cwd=ROOT, env=env, check=True,
                 timeout=120)
  proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", str(out)], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=2400, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  check_dry_run(out, carry)
  # Trained as on the GPU host, which has no TensorFlow: metrics.jsonl, no event files.
  assert (work / "train" / "metrics.jsonl").exists()
  assert not list((work / "train").glob("events.out.tfevents*"))


def check_dry_run(out, carry):
  """What a dry run leaves in `out`: one JSON, one log, every phase finished."""
  assert sorted(os.listdir(out)) == ["gpu_check.json", "gpu_check.log"]
  report = json.loads((out / "gpu_check.json").read_text())

  benches = [f"bench_{d}_{e}" for d in gpu_check.DTYPES for e in gpu_check.ENTRIES]
  expected = ["install", "probe", "lower_cuda", *benches, "train", "precision"]
  assert list(report["phases"]) == expected
  assert report["phases_finished"] == expected and report["all_finished"]
  assert report["mode"] == "dry-run" and report["host"]["platform"] == "cpu"
  assert report["jax_version"] and report["device_kind"]
  assert set(report["host"]["imports"].values()) == {"ok"}
  assert set(report["install"]["carry"].values()) == {"ok"}
  assert report["settings"]["tfds_data_dir"] == str(carry / "data")

  lowered = report["lowered"]
  assert lowered["platform"] == "cuda"
  for dtype in gpu_check.DTYPES:
    step, bound = lowered["train_step"][dtype], lowered["eval_bound"][dtype]
    # The CUDA programs' loops are tests/test_platforms.py's to check.
    assert (step["batch"], step["memory"], step["samples"]) == (256, 32, 4)
    assert step["convolution"] > 0 and step["stablehlo_chars"] > 0
    assert (bound["memory"], bound["samples"]) == (19, 1000)
    assert bound["convolution"] > 0 and bound["while"] >= 1  # over the chunks of samples

  for dtype in gpu_check.DTYPES:
    for name in gpu_check.ENTRIES:
      entry = report["benchmarks"][dtype][name]  # benchmarks/run.py's entry, as it wrote it
      assert set(BENCH_KEYS) <= set(entry), set(BENCH_KEYS) - set(entry)
      assert entry["name"] == name and entry["dtype"] == dtype
      assert entry["min_s"] <= entry["median_s"] <= entry["max_s"]
      assert entry["gflops_per_s"] > 0 and entry["matmul_gflops_per_s"] > 0
      assert entry["peak_rss_mb"] > 0
      assert gpu_check.DRY_RUN_XLA_FLAGS in entry["xla_flags"].split()
    assert report["summary"]["train_recipe"][f"{dtype}_median_s"] > 0
  assert report["summary"]["train_recipe"]["bfloat16_speedup"] > 0
  small = report["benchmarks"]["float32"]["train_small"]
  assert (small["batch"], small["memory"], small["samples"]) == (2, 3, 2)  # the dry run's sizes

  train = report["train"]
  assert train["checkpoint_steps"] == [6] and train["logged_steps"] == [2, 4, 6]
  assert train["steps_timed"] == 4 and train["step_s"] > 0
  assert np.isfinite(train["final_neg_bound"])

  precision = report["precision"]
  assert precision["cells"] == "1:1,2:3" and precision["num_targets"] == 4
  assert precision["max_abs_gap"] == max(abs(g["gap"]) for g in precision["gaps"])

  log = (out / "gpu_check.log").read_text()
  for name in expected:
    assert f"[{name}] finished" in log
