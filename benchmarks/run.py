"""Times the jitted training step and the large-K evaluation bound; writes JSON.

    python benchmarks/run.py --out bench.json                   # every benchmark
    python benchmarks/run.py --only train_small --out s.json    # one of them
    python benchmarks/run.py --only train_small --batch 2 --memory 3 --repeats 1 --out t.json

Each benchmark runs in its own Python process, so that `peak_rss_mb` (the process's peak
resident memory, compilation included) belongs to that benchmark alone. In that process the
function is compiled, called `--warmup` times untimed, then `--repeats` times; the entry holds
the median, min and max wall time, the sizes, the device, the model GFLOP/s (FLOPs counted by
hand, benchmarks/flops.py), XLA's own FLOP and memory figures of the compiled step, and the
GFLOP/s of a float32 matrix product timed in the same process (the roofline reference).
As train.py and evaluate.py do, a CPU-only host is split into one JAX device per core, the
batch sharded over them (`--cpu-devices 1`: one device), and the processes run with glibc's
allocator tunables of vma_jax/cpu/host.py (set GLIBC_TUNABLES, even to "", to choose otherwise).
Environment variables (XLA_FLAGS, GLIBC_TUNABLES, LD_PRELOAD) pass to the benchmark processes.

Benchmarks:
  train_small      training step, B=32 episodes, T=8 memory images, K=4 samples
  train_recipe     training step at the recipe's size, B=256, T=32, K=4
  eval_t19_k1000   streaming L_K of 16 targets, T=19, K=1000 (config.eval.chunk_size)
  eval_t100_k1000  the same at T=100 (cell 5/100), and at T=1000 (cell 5/1000): fewer
  eval_t1000_k1000 targets at once, as evaluation takes them (`vma_jax.cells.targets_per_batch`:
                   about 16 x 20 images per batch, at least one target per device); the
                   entries' s_per_target and xla_temp_mb_per_target compare the three
  episodes         benchmarks/episodes_bench.py (episode sampling; needs the prepared data)
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# name -> (kind, sizes, default repeats). Sizes: batch B, memory T, samples K.
BENCHMARKS = {
    "train_small": ("train", dict(batch=32, memory=8, samples=4), 10),
    "train_recipe": ("train", dict(batch=256, memory=32, samples=4), 5),
    "eval_t19_k1000": ("eval", dict(batch=16, memory=19, samples=1000), 5),
    "eval_t100_k1000": ("eval", dict(batch=16, memory=100, samples=1000, same_class=5), 3),
    "eval_t1000_k1000": ("eval", dict(batch=16, memory=1000, samples=1000, same_class=5), 3),
    "episodes": ("script", {}, 0),
}

# The time per call this project aims at on a 2-core CPU (docs/performance.md). Speed against
# the reference PyTorch implementation is measured side by side, in the same window:
# `bash ../shared/reference/run.sh ref.json` beside `python benchmarks/run.py --out bench.json`.
TARGET_CPU_S = {"train_small": 0.5, "train_recipe": 7.0, "eval_t19_k1000": 10.0}


def _peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _xla_figures(compiled):
  out = {}
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0] if cost else {}
    if cost:
      out["xla_flops"] = float(cost.get("flops", 0.0))
      out["xla_bytes_accessed"] = float(cost.get("bytes accessed", 0.0))
  except Exception as e:  # pylint: disable=broad-except
    out["xla_cost_error"] = repr(e)
  try:
    mem = compiled.memory_analysis()
    if mem is not None:
      out["xla_temp_mb"] = mem.temp_size_in_bytes / 2**20
      out["xla_argument_mb"] = mem.argument_size_in_bytes / 2**20
      out["xla_output_mb"] = mem.output_size_in_bytes / 2**20
  except Exception as e:  # pylint: disable=broad-except
    out["xla_memory_error"] = repr(e)
  return out


def run_child(name, args):
  """Runs one benchmark in this process and returns its entry."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  from benchmarks import workloads  # pylint: disable=g-import-not-at-top

  kind, sizes, repeats = BENCHMARKS[name]
  sizes = dict(sizes)
  for field in ("batch", "memory", "samples"):
    if getattr(args, field) is not None:
      sizes[field] = getattr(args, field)
  repeats = args.repeats or repeats
  from vma_jax.cpu import host  # pylint: disable=g-import-not-at-top
  host.use_cpu_cores([sizes["batch"]], args.cpu_devices)  # as train.py and evaluate.py do
  device = jax.devices()[0]

  if kind == "train":
    work = workloads.train_workload(sizes["batch"], sizes["memory"], sizes["samples"],
                                    dtype=args.dtype, cpu_kernels=args.cpu_kernels)
  else:
    from vma_jax import cells  # pylint: disable=g-import-not-at-top
    # The targets evaluation takes at once at this T (fewer for large memories).
    sizes["batch"] = cells.targets_per_batch(sizes["batch"], sizes["memory"],
                                             jax.device_count())
    same_class = sizes.pop("same_class", 0)
    cell = cells.Cell(0 if same_class else 2, sizes["memory"], same_class)
    work = workloads.eval_workload(sizes["batch"], sizes["memory"], sizes["samples"],
                                   chunk_size=args.chunk_size, dtype=args.dtype,
                                   cpu_kernels=args.cpu_kernels, cell=cell)
  times, cpu_times = timing.times(work.run, warmup=args.warmup, repeats=repeats)
  median = statistics.median(times)

  matmul = workloads.matmul_workload(args.matmul_n)
  mm_times, _ = timing.times(matmul.run, warmup=2, repeats=5)
  mm_gflops = matmul.model_flops / statistics.median(mm_times) / 1e9

  entry = dict(
      name=name, device=f"{device.platform}:{device.device_kind}",
      num_devices=jax.device_count(), cpu_count=os.cpu_count(),
      jax_version=jax.__version__, dtype=args.dtype, cpu_kernels=args.cpu_kernels,
      step_fn=work.step_fn,
      **sizes, repeats=repeats, warmup=args.warmup,
      median_s=median, min_s=min(times), max_s=max(times), times_s=times,
      cpu_median_s=statistics.median(cpu_times), load_avg_1min=os.getloadavg()[0],
      peak_rss_mb=_peak_rss_mb(),
      model_gflop=work.model_flops / 1e9, gflops_per_s=work.model_flops / median / 1e9,
      matmul_n=args.matmul_n, matmul_gflops_per_s=mm_gflops,
      roofline_fraction=(work.model_flops / median / 1e9) / mm_gflops,
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      glibc_tunables=os.environ.get("GLIBC_TUNABLES"), ld_preload=os.environ.get("LD_PRELOAD"),
      **work.extra, **_xla_figures(work.compiled))
  if kind == "eval":
    # Per target: what a grid of cells costs grows with these.
    entry.update(chunk_size=args.chunk_size, s_per_target=median / sizes["batch"],
                 xla_temp_mb_per_target=entry.get("xla_temp_mb", math.nan) / sizes["batch"])
  if device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      entry["peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
  if name in TARGET_CPU_S and device.platform == "cpu":
    entry.update(target_cpu_s=TARGET_CPU_S[name], meets_target=median <= TARGET_CPU_S[name])
  return entry


def _run_script(name, args):
  """benchmarks/episodes_bench.py as its own process, if it exists and its data is there."""
  script = os.path.join(_ROOT, "benchmarks", "episodes_bench.py")
  entry = dict(name=name, device="cpu", median_s=None, min_s=None, max_s=None,
               peak_rss_mb=None)
  if not os.path.exists(script):
    entry["skipped"] = "benchmarks/episodes_bench.py does not exist"
    return entry
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "episodes.json")
    proc = subprocess.run([sys.executable, script, "--out", out], cwd=_ROOT,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not os.path.exists(out):
      entry["skipped"] = (f"episodes_bench.py exited with {proc.returncode} (the prepared "
                          f"Omniglot data may be absent): {proc.stderr.strip()[-400:]}")
      return entry
    with open(out) as f:
      result = json.load(f)
  results = result if isinstance(result, list) else [result]
  entries = []
  for r in results:
    e = dict(entry)
    e.update(r)
    e["name"] = name if len(results) == 1 else f"{name}/{r.get('name', len(entries))}"
    entries.append(e)
  return entries


def _child_argv(name, args, out):
  argv = [sys.executable, os.path.abspath(__file__), "--child", name, "--out", out,
          "--warmup", str(args.warmup), "--dtype", args.dtype,
          "--cpu-kernels", args.cpu_kernels,
          "--matmul-n", str(args.matmul_n)]
  for field in ("batch", "memory", "samples", "repeats", "chunk_size", "cpu_devices"):
    value = getattr(args, field)
    if value is not None:
      argv += [f"--{field.replace('_', '-')}", str(value)]
  return argv


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="JSON file: a list of entries")
  parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS),
                      help="run only this benchmark (repeatable)")
  parser.add_argument("--batch", type=int, help="override B (targets for the bound)")
  parser.add_argument("--memory", type=int, help="override T")
  parser.add_argument("--samples", type=int, help="override K")
  parser.add_argument("--repeats", type=int, help="timed calls (default per benchmark)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
  parser.add_argument("--chunk-size", type=int, help="samples per chunk of the bound "
                      "(default config.eval.chunk_size)")
  parser.add_argument("--dtype", default="float32", help="config.model.dtype")
  parser.add_argument("--cpu-kernels", default="auto", choices=("auto", "on", "off"),
                      help="config.model.cpu_kernels: the CPU layers or stock Flax layers")
  parser.add_argument("--cpu-devices", type=int, help="JAX devices a CPU-only host is split "
                      "into (default: one per core, as many as divide B; 1: one device)")
  parser.add_argument("--matmul-n", type=int, default=2048, help="size of the reference matmul")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child:
    entry = run_child(args.child, args)
    with open(args.out, "w") as f:
      json.dump(entry, f, indent=1)
    return

  names = args.only or list(BENCHMARKS)
  entries = []
  for name in names:
    print(f"[{name}] ...", flush=True)
    if BENCHMARKS[name][0] == "script":
      result = _run_script(name, args)
      entries.extend(result if isinstance(result, list) else [result])
    else:
      with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, f"{name}.json")
        subprocess.run(_child_argv(name, args, out), check=True)
        with open(out) as f:
          entries.append(json.load(f))
    e = entries[-1]
    if e.get("skipped"):
      print(f"[{name}] skipped: {e.get('skipped')}", flush=True)
    elif "gflops_per_s" not in e:
      print(f"[{e['name']}] median {e.get('median_s')} s per call", flush=True)
    else:
      print(f"[{name}] {e['device']} x{e['num_devices']} B={e.get('batch')} T={e.get('memory')} "
            f"K={e.get('samples')}: median {e['median_s']:.3f} s (min {e['min_s']:.3f}, max "
            f"{e['max_s']:.3f}, {e['repeats']} repeats), {e['gflops_per_s']:.1f} GFLOP/s vs "
            f"matmul {e['matmul_gflops_per_s']:.1f}, peak RSS {e['peak_rss_mb']:.0f} MB",
            flush=True)
  with open(args.out, "w") as f:
    json.dump(entries, f, indent=1)
  print(f"wrote {len(entries)} entries to {args.out} ({platform.node()})")


if __name__ == "__main__":
  # With GLIBC_TUNABLES set it does nothing: the process that only starts the entries' then
  # need not import JAX (a second or more of each start).
  if "GLIBC_TUNABLES" not in os.environ:
    from vma_jax.cpu import host  # pylint: disable=g-import-not-at-top
    host.reexec_with_malloc_tunables()  # as train.py and evaluate.py; inherited by each entry
  main()
