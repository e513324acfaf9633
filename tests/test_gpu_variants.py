"""benchmarks/gpu_variants.py: its dry run measures every variant into one JSON and one table;
the scan variant trains what separate steps train; a failure or the time budget is recorded
and the rest still run."""

import json
import os
import sys

import jax
import numpy as np
import pytest

import helpers
from benchmarks import gpu_variants as gv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_dry_run_measures_every_variant(tmp_path, monkeypatch, capsys):
  """All 14 variants, each its own compiled programs, in this process (as the script runs
  them in its own), and one subprocess for an XLA flag: a minute or more on 2 cores.
  Compiled with XLA's optimisations off and timed once each: the numbers are not looked at,
  only that every variant runs and is recorded."""
  out = tmp_path / "out"
  env = helpers.child_env()  # for the XLA-flag subprocess: the package on its path
  for name in ("JAX_PLATFORMS", "XLA_FLAGS", "PYTHONPATH"):  # main sets them; undone after
    monkeypatch.setenv(name, env[name])
  # One XLA-flag subprocess on the cheapest variant: the phase's path, at little cost.
  status = gv.main(
      ["--dry-run", "--out", str(out), "--extra-xla-flags=--xla_cpu_enable_fast_math=false",
       "--extra-xla-variants", "eval_b16", "--reference", "bench_ref_gpu.py",
       "--repeats", "1", "--warmup", "0",
       # Every variant measured on a loaded host too: the budget's cuts are tested below.
       "--budget-s", "1800"])
  stdout = capsys.readouterr().out
  assert status == 0, stdout[-3000:]
  result = json.loads((out / gv.JSON_NAME).read_text())
  assert result["mode"] == "dry-run" and result["device"]["platform"] == "cpu"
  assert gv.gpu_check.DRY_RUN_XLA_FLAGS in result["settings"]["xla_flags"].split()
  entries = {e["name"]: e for e in result["variants"]}
  assert list(entries) == list(gv.VARIANT_NAMES)
  for name, e in entries.items():
    assert e["status"] == "ok", (name, e.get("error"))
    assert e["compile_s"] > 0 and 0 < e["min_ms"] <= e["ms"] <= e["max_ms"], name
    assert e["speedup"] > 0, name
  assert entries["baseline"]["speedup"] == 1.0 and entries["eval_b16"]["speedup"] == 1.0
  # The distinct rows are on at the dry run's size (auto), and off where asked.
  assert entries["baseline"]["distinct_rows"] == 24
  assert entries["distinct_off"]["distinct_rows"] is None
  assert (entries["scan_s10"]["steps_per_call"], entries["scan_s1"]["steps_per_call"]) == (2, 1)
  assert [entries[f"eval_b{n}"]["targets"] for n in (16, 64, 256)] == [1, 4, 16]
  for name, e in entries.items():  # every train variant's last loss is finite
    if e["kind"] != "eval":
      assert e["loss_finite"] and np.isfinite(e["last_loss"]), name
  [xla] = result["xla_variants"]
  assert (xla["name"], xla["status"], xla["xla_flags"]) == (
      "xla0_eval_b16", "ok", "--xla_cpu_enable_fast_math=false")
  assert xla["ms"] > 0 and xla["speedup"] > 0
  assert result["reference"]["status"] == "skipped" and "dry run" in result["reference"]["note"]
  table = (out / gv.TABLE_NAME).read_text()
  for name in list(gv.VARIANT_NAMES) + ["xla0_eval_b16"]:
    assert f"| `{name}` |" in table, name
  assert table.strip() in stdout


@pytest.mark.slow
def test_scan_variant_trains_what_separate_steps_train():
  """S steps in one scanned call: the same episodes, losses and parameters as S calls of the
  training sampler and `make_train_step` with the same keys. Compiled as the dry run
  compiles (XLA's optimisations off, the dry run's XLA flags, which the suite's include, the
  scan unrolled): the dry run's programs, loaded from the compilation cache where it ran
  first."""
  from vma_jax import train
  assert set(gv.gpu_check.DRY_RUN_XLA_FLAGS.split()) <= set(os.environ["XLA_FLAGS"].split())
  sizes = gv.DRY_RUN_SIZES
  config = gv.make_config(sizes)
  context = gv.Context(sizes)
  data, key, mesh = context.data("train"), context.key, context.mesh
  num_steps = sizes.steps(10)
  multi_step = gv.make_multi_step(config, mesh, num_steps, unroll=sizes.scan_unroll)
  args = (context.fresh_state(), data, key, np.int32(0))
  scanned, metrics_S = multi_step(*args)

  sample = train.make_episode_sampler(config, mesh)
  step = train.make_train_step(config, mesh=mesh)
  state, losses = context.fresh_state(), []
  for s in range(num_steps):
    episodes, sample_key = sample(data, key, np.int32(s))
    assert episodes.distinct is not None  # the distinct rows' path is the one compared
    state, metrics = step(state, episodes, sample_key)
    losses.append(float(metrics["loss"]))
  assert metrics_S["loss"].shape == (num_steps,)
  np.testing.assert_allclose(np.asarray(metrics_S["loss"]), losses, rtol=1e-5)
  assert int(scanned.step) == int(state.step) == num_steps
  # Within a tenth of one Adam step (lr 1e-4): float rounding of the fused program, not
  # another training.
  for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def _custom(name, build, programs=1):
  return gv.Variant(name, "custom", f"custom {name}", programs=programs, build=build)


def _matmul(context):
  del context
  a_NxN = jax.numpy.ones((8, 8))
  fn = jax.jit(jax.numpy.matmul)
  return gv.Prepared(fn, (a_NxN, a_NxN),
                     lambda compiled: lambda: jax.block_until_ready(compiled(a_NxN, a_NxN)))


def _broken(context):
  raise ValueError("deliberately broken\nsecond line")


def test_a_failing_variant_is_recorded_and_the_rest_still_run():
  written = []
  entries = gv.run_variants(
      [_custom("broken", _broken), _custom("matmul", _matmul)], gv.Context(gv.DRY_RUN_SIZES),
      warmup=1, repeats=2, budget_s=1e6, per_program_s=0, start=0.0,
      on_entry=lambda e: written.append([x["status"] for x in e]), log=lambda *_: None)
  broken, matmul = entries
  assert broken["status"] == "failed"
  assert broken["error"] == "ValueError: deliberately broken"  # one line
  assert matmul["status"] == "ok" and matmul["ms"] > 0
  assert written == [["failed"], ["failed", "ok"]]  # written after every variant


def test_a_budget_too_small_skips_variants_with_the_reason(tmp_path, monkeypatch):
  import time
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # what main sets for a dry run, undone after
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main adds its flags
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", helpers.CACHE_DIR)
  # 100 s left: a one-program variant runs, a two-program one (120 s needed) is skipped.
  entries = gv.run_variants(
      [_custom("one", _matmul), _custom("two", _matmul, programs=2)],
      gv.Context(gv.DRY_RUN_SIZES), warmup=0, repeats=1, budget_s=100, per_program_s=60,
      start=time.monotonic(), log=lambda *_: None)
  assert [e["status"] for e in entries] == ["ok", "skipped"]
  assert entries[1]["note"].startswith("time budget:") and "120 s needed" in entries[1]["note"]

  # The script with no time at all: every variant skipped, the JSON and table still written.
  assert gv.main(["--dry-run", "--budget-s", "0", "--out", str(tmp_path)]) == 0
  result = json.loads((tmp_path / gv.JSON_NAME).read_text())
  assert [e["name"] for e in result["variants"]] == list(gv.VARIANT_NAMES)
  assert {e["status"] for e in result["variants"]} == {"skipped"}
  assert all("time budget" in e["note"] for e in result["variants"])
  assert "no --extra-xla-flags" in result["xla_note"]
  assert gv.gpu_check.DRY_RUN_XLA_FLAGS in result["settings"]["xla_flags"].split()
  assert result["reference"]["status"] == "skipped"
  assert (tmp_path / gv.TABLE_NAME).read_text().count("| skipped |") == len(gv.VARIANT_NAMES)


def test_reference_records_its_recipe_step_and_the_ratio(tmp_path):
  """--reference: the reference's timing script in a subprocess (here a stand-in that writes
  its JSON), its fastest recipe step, and how many times the baseline's time it is."""
  import argparse
  import time
  script = tmp_path / "bench_ref_gpu.py"
  script.write_text(
      "import json, sys\n"
      "out = sys.argv[sys.argv.index('--out') + 1]\n"
      "json.dump([dict(name='train_recipe', cudnn_benchmark=False, median_s=0.06),\n"
      "           dict(name='train_recipe', cudnn_benchmark=True, median_s=0.05,\n"
      "                peak_device_mb=4400.0)], open(out, 'w'))\n")
  args = argparse.Namespace(dry_run=False, budget_s=600.0, reference_s=10.0, repeats=3,
                            reference_python=sys.executable, reference_cudnn="0,1")
  entries = [dict(name="baseline", status="ok", unit="step", ms=20.0),
             dict(name="bf16", status="ok", unit="step", ms=12.5),
             dict(name="eval_b16", status="ok", unit="target", ms=1.0)]
  ref = gv.run_reference(str(script), args, time.monotonic(), entries, log=lambda *_: None)
  assert ref["status"] == "ok", ref
  assert ref["recipe_ms"] == pytest.approx(50.0) and ref["cudnn_benchmark"] is True
  assert ref["reference_over_baseline"] == pytest.approx(2.5)
  assert (ref["best_variant"], ref["reference_over_best"]) == ("bf16", pytest.approx(4.0))

  late = gv.run_reference(str(script), args, time.monotonic() - 595, entries,
                          log=lambda *_: None)
  assert late["status"] == "skipped" and late["note"].startswith("time budget:")
