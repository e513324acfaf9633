"""Smoke tests of the benchmark scripts: run.py's large-memory entry, step_parts.py,
conv_grads.py, precision.py. (run.py's keys: the GPU check's dry run, tests/test_gpu_check.py.)"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
  """The scripts' environment: this one (helpers.SUITE_ENV) and the dry runs' XLA flags, as
  the GPU check's dry run compiles (one compile of run.py's step serves both)."""
  return dict(os.environ,
              XLA_FLAGS=gpu_check.with_dry_run_xla_flags(os.environ.get("XLA_FLAGS")))


@pytest.mark.slow
def test_large_memory_entry_takes_the_targets_evaluation_takes(tmp_path):
  """eval_t100_k1000 at a tiny size: cell 5/T, fewer targets per call as T grows, and the
  per-target figures the entries compare."""
  out = tmp_path / "large.json"
  subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--only", "eval_t100_k1000",
       "--batch", "4", "--memory", "40", "--samples", "2", "--chunk-size", "2", "--repeats", "1",
       "--warmup", "0", "--matmul-n", "64", "--cpu-devices", "1", "--out", str(out)],
      check=True, cwd=ROOT, env=_env(), timeout=600)
  [entry] = json.loads(out.read_text())
  assert entry["cell"] == "5/40" and entry["memory"] == 40
  assert entry["batch"] == 4 * 20 // 41  # cells.targets_per_batch
  assert entry["s_per_target"] == pytest.approx(entry["median_s"] / entry["batch"])
  assert entry["xla_temp_mb_per_target"] > 0


def test_conv_grads_times_every_encoder_layer_and_agrees_with_xla(tmp_path):
  out = tmp_path / "conv.json"
  subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "conv_grads.py"), "--images", "2",
       "--repeats", "1", "--out", str(out)],
      check=True, cwd=ROOT, env=_env(), timeout=600)
  rows = json.loads(out.read_text())["rows"]
  assert len(rows) == 6
  for row in rows:
    assert row["forward_s"] > 0 and row["xla_kernel_grad_s"] > 0
    assert row["matmul_kernel_grad_s"] > 0
    assert row["max_abs_diff"] < 1e-5 * row["max_abs_xla"]


@pytest.mark.slow
def test_step_parts_times_each_part_and_each_conv(tmp_path):
  out = tmp_path / "parts.json"
  subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "step_parts.py"), "--batch", "2",
       "--memory", "2", "--samples", "3", "--repeats", "1", "--out", str(out)],
      check=True, cwd=ROOT, env=_env(), timeout=600)
  result = json.loads(out.read_text())
  assert (result["batch"], result["memory"], result["samples"]) == (2, 2, 3)
  rows = result["rows"]
  assert [(r["part"], r["rows"]) for r in rows[:3]] == [("h", 6), ("e", 8), ("decoder", 6)]
  for r in rows[:3]:
    assert 0 < r["forward_s"] and 0 < r["forward_backward_s"] and r["forward_gflop"] > 0
  assert len(rows) == 3 + 6 and all(r["rows"] == 6 for r in rows[3:])
  for r in rows[3:]:
    assert min(r["forward_s"], r["input_grad_s"], r["kernel_grad_s"]) > 0


def test_hand_counted_flops_match_the_published_estimates():
  """22 MFLOP per encoded image, 62 per decoded sample; a recipe step ~280 GFLOP forward."""
  from benchmarks import flops
  assert abs(flops.encoder_flops() / 1e6 - 22.3) < 0.1
  assert abs(flops.decoder_flops() / 1e6 - 62.1) < 0.1
  # K < T: e and the skip terms run on the K sampled slots only.
  assert abs(flops.forward_flops(256, 32, 4) / 1e9 - 281.2) < 0.5
  # K >= T: e and the skip terms on every slot once; more samples add decoder work only.
  per_sample = flops.decoder_flops() - flops.skip_terms_flops() + flops.heads_flops()
  extra = flops.forward_flops(16, 19, 2000) - flops.forward_flops(16, 19, 1000)
  assert extra == 16 * 1000 * per_sample


@pytest.mark.slow
def test_precision_script_reports_each_cell_and_fails_beyond_the_tolerance(
    tmp_path, untrained_run):
  """benchmarks/precision.py on a saved checkpoint: one entry per cell, exit 1 when |gap| is
  not below --tolerance (0 nat here), exit 0 within it; nothing written to the workdir."""
  workdir = untrained_run
  command = [sys.executable, os.path.join(ROOT, "benchmarks", "precision.py"),
             f"--workdir={workdir}", "--cells=1:1,2:2", "--num_targets=4",
             "--num_importance=3", "--batch_size=2", "--chunk_size=3", "--cpu_devices=1"]

  out = tmp_path / "gap.json"
  strict = subprocess.run(command + ["--tolerance=0", f"--out={out}"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
  assert strict.returncode == 1, strict.stderr
  assert "NOT within 0.0 nat" in strict.stdout
  entries = json.loads(out.read_text())
  assert [(e["max_classes"], e["memory_size"]) for e in entries] == [(1, 1), (2, 2)]
  for e in entries:
    assert (e["dtype"], e["reference_dtype"], e["num_targets"]) == ("bfloat16", "float32", 4)
    assert 0 < e["max_abs_target_gap"] < 2.0 and e["seconds"] > 0
  loose = subprocess.run(command + ["--tolerance=5"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
  assert loose.returncode == 0, loose.stderr
  assert "within 5.0 nat" in loose.stdout
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json"]
