"""The steps of benchmarks/gpu_check.sh that are Python: carry, install, probe, lower, report.

    python benchmarks/gpu_check.py prepare --carry .gpu_check    # wheels and data to carry
    python benchmarks/gpu_check.py install --wheels W --target T --out install.json
    python benchmarks/gpu_check.py probe --mode gpu --out probe.json
    python benchmarks/gpu_check.py lower --platform cuda --out lower.json
    python benchmarks/gpu_check.py report --work WORK --mode gpu --out gpu_check.json

Only the standard library is imported at module level: `install` runs before the packages it
installs are there, and `report` must write the JSON whatever else failed.
"""

import argparse
import datetime
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# (module, distribution) that the package imports and a bare GPU host may lack; only these
# are ever installed from the carried wheels, and only where the module is missing.
# matplotlib draws the image summaries (with its own dependencies), tqdm the progress bar.
REQUIRED = (("ml_collections", "ml-collections"), ("yaml", "PyYAML"), ("absl", "absl-py"),
            ("tqdm", "tqdm"), ("matplotlib", "matplotlib"), ("PIL", "pillow"),
            ("contourpy", "contourpy"), ("cycler", "cycler"), ("fontTools", "fonttools"),
            ("kiwisolver", "kiwisolver"), ("pyparsing", "pyparsing"),
            ("dateutil", "python-dateutil"), ("six", "six"), ("packaging", "packaging"))
# Installed on a bare GPU host and never replaced: reported with their versions.
HOST_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections",
                 "PyYAML", "absl-py", "tqdm", "matplotlib", "pillow")
SPLITS = ("train", "test")
MAX_CARRY_MB = 60
MANIFEST = "MANIFEST.json"
ENTRIES = ("train_recipe", "eval_t19_k1000", "train_small")
DTYPES = ("float32", "bfloat16")
TOLERANCE_NATS = 0.1  # the most a reported bound may move with the precision
# docs/performance.md's GPU targets: 100,000 recipe steps in 15 minutes, and the 14 cells at
# K = 1000 in 5 minutes (about 26 ms per call of 16 targets at T = 19).
TARGET_S = {"train_recipe": 0.009, "eval_t19_k1000": 0.026}
# XLA flags of the dry runs on the CPU (gpu_check.sh --dry-run, gpu_variants.py --dry-run):
# XLA:CPU's loop emitters compile the same programs faster than its fusion emitters (with
# XLA's optimisations off, the recipe step's compile and set-up took 6.6 s instead of 8.9 s
# on 2 cores, 2026-12-05), and these runs check what the programs compute, not how fast.
DRY_RUN_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"


def with_dry_run_xla_flags(xla_flags=""):
  """`xla_flags` (an XLA_FLAGS value) with DRY_RUN_XLA_FLAGS added, unless already there."""
  flags = (xla_flags or "").split()
  return " ".join(flags + [f for f in DRY_RUN_XLA_FLAGS.split() if f not in flags])


def _dump(obj, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(obj, f, indent=1)
    f.write("\n")


def load_json(path):
  """The JSON in `path`, or None where it is missing or does not parse."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _sha256(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _version(dist):
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def _normalise(name):
  return re.sub(r"[-_.]+", "_", name).lower()


def _git(*args):
  try:
    proc = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True,
                          timeout=10, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return None
  return proc.stdout.strip() if proc.returncode == 0 else None


# ----------------------------------------------------------------------------------------
# prepare: here, what a bare GPU host lacks.


def prepare(carry, data_dir=None, image_size=26, wheels=True, python_version="3.12"):
  """Fills `carry` with the wheels of REQUIRED and the prepared numpy cache; returns its
  manifest (also written to carry/MANIFEST.json)."""
  from vma_jax import data  # pylint: disable=g-import-not-at-top
  data_dir = data_dir or data.default_data_dir()
  sources = {split: data.cache_path(data_dir, split, image_size) for split in SPLITS}
  missing = [path for path in sources.values() if not os.path.exists(path)]
  if missing:
    sys.exit(f"gpu_check.py prepare: {missing[0]} does not exist. Prepare the data first "
             f"(`python -m vma_jax.data --data_dir {data_dir}`, docs/data.md), or pass the "
             "data dir that holds it with --data-dir.")
  wheel_dir = os.path.join(carry, "wheels")
  os.makedirs(wheel_dir, exist_ok=True)
  if wheels:
    for _, dist in REQUIRED:
      for old in glob.glob(os.path.join(wheel_dir, f"{_normalise(dist)}-*.whl")):
        os.remove(old)  # one version of each: two would stop the install there
      version = _version(dist)
      spec = f"{dist}=={version}" if version else dist  # the version the tests ran with
      subprocess.run(
          [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp",
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
           "--platform", "manylinux2014_x86_64", "-d", wheel_dir, spec], check=True)
  files = {}
  for split, source in sources.items():
    relative = os.path.join("data", os.path.relpath(source, data_dir))
    target = os.path.join(carry, relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(source, target)
  for path in sorted(glob.glob(os.path.join(carry, "**", "*"), recursive=True)):
    if os.path.isfile(path) and os.path.basename(path) != MANIFEST:
      files[os.path.relpath(path, carry)] = dict(bytes=os.path.getsize(path),
                                                 sha256=_sha256(path))
  total_mb = sum(f["bytes"] for f in files.values()) / 2**20
  if total_mb > MAX_CARRY_MB:
    sys.exit(f"gpu_check.py prepare: {carry} holds {total_mb:.1f} MB, more than "
             f"{MAX_CARRY_MB} MB; remove what is not listed in benchmarks/gpu_check.py.")
  manifest = dict(created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  commit=_git("rev-parse", "HEAD"), dirty=bool(_git("status", "--porcelain")),
                  python_version=python_version, image_size=image_size, total_mb=total_mb,
                  files=files)
  _dump(manifest, os.path.join(carry, MANIFEST))
  return manifest


# ----------------------------------------------------------------------------------------
# install: there, what the host lacks, from the carried wheels.


def wheels_to_install(wheel_dir, required=REQUIRED):
  """({dist: wheel path} for each required module this Python lacks, [dists with no wheel])."""
  chosen, no_wheel = {}, []
  wheels = sorted(glob.glob(os.path.join(wheel_dir, "*.whl"))) if wheel_dir else []
  for module, dist in required:
    if importlib.util.find_spec(module) is not None:
      continue
    found = [w for w in wheels if os.path.basename(w).split("-")[0].lower() == _normalise(dist)]
    if found:
      chosen[dist] = found[-1]
    else:
      no_wheel.append(dist)
  return chosen, no_wheel


def verify_carry(carry):
  """{file: 'ok' | what is wrong} for the files carry/MANIFEST.json lists ({} without one)."""
  manifest = load_json(os.path.join(carry, MANIFEST)) if carry else None
  if not manifest:
    return {}
  checked = {}
  for name, expected in manifest["files"].items():
    path = os.path.join(carry, name)
    if not os.path.exists(path):
      checked[name] = "missing"
    elif _sha256(path) != expected["sha256"]:
      checked[name] = "sha256 differs from the manifest"
    else:
      checked[name] = "ok"
  return checked


def install(wheel_dir, target, carry=None):
  """Installs the wheels of the missing REQUIRED modules into `target` (no dependencies, no
  other package touched); returns what it found and did."""
  chosen, no_wheel = wheels_to_install(wheel_dir)
  result = dict(wheel_dir=wheel_dir, target=target, present={d: _version(d) for _, d in REQUIRED},
                installed=sorted(os.path.basename(w) for w in chosen.values()),
                missing_without_wheel=no_wheel, carry=verify_carry(carry),
                manifest=load_json(os.path.join(carry, MANIFEST)) if carry else None)
  if result["manifest"]:
    result["manifest"].pop("files", None)
  if chosen:
    os.makedirs(target, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--no-compile", "--no-cache-dir", "--upgrade", "--target", target,
                    *chosen.values()], check=True)
  return result


# ----------------------------------------------------------------------------------------
# probe: what this host runs on, and whether the package imports.

_IMPORTS = ("ml_collections.config_flags", "configs.default", "vma_jax.data", "vma_jax.train",
            "vma_jax.evaluate", "vma_jax.cells", "vma_jax.checkpoints")


def probe():
  """The host's JAX, devices and packages, and the import of each module the check runs."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  result = dict(
      python=sys.version.split()[0], executable=sys.executable,
      jax_version=jax.__version__, jaxlib_version=_version("jaxlib"),
      backend=jax.default_backend(), platform=device.platform, device_kind=device.device_kind,
      num_devices=jax.device_count(),
      default_matmul_precision=str(getattr(jax.config, "jax_default_matmul_precision", None)),
      packages={dist: _version(dist) for dist in HOST_PACKAGES},
      env={name: os.environ.get(name) for name in (
          "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
          "GLIBC_TUNABLES", "TFDS_DATA_DIR", "PYTHONPATH", "JAX_PLATFORMS")})
  try:
    stats = device.memory_stats() or {}
    if "bytes_limit" in stats:
      result["device_memory_limit_gb"] = stats["bytes_limit"] / 2**30
  except Exception:  # pylint: disable=broad-except
    pass  # not every backend has memory statistics
  if shutil.which("nvidia-smi"):
    try:
      proc = subprocess.run(
          ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
           "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False)
      result["nvidia_smi"] = proc.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
      result["nvidia_smi"] = repr(e)
  imports = {}
  for module in _IMPORTS:
    try:
      importlib.import_module(module)
      imports[module] = "ok"
    except Exception as e:  # pylint: disable=broad-except
      imports[module] = f"{type(e).__name__}: {e}"
  result["imports"] = imports
  return result


# ----------------------------------------------------------------------------------------
# lower: the benchmarked programs as they would run on an accelerator, built on this host.


def _op_counts(stablehlo):
  return {op: len(re.findall(rf"stablehlo\.{op}\b", stablehlo))
          for op in ("while", "convolution")}


def lower(platform="cuda"):
  """Op counts of the recipe-size train step and the T = 19, K = 1000 bound of 16 targets, in
  float32 and bfloat16, lowered for `platform` (StableHLO; nothing is compiled), as
  tests/test_platforms.py lowers them."""
  import functools  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import default as default_config  # pylint: disable=g-import-not-at-top
  from vma_jax import episodes as episodes_lib  # pylint: disable=g-import-not-at-top
  from vma_jax import cells  # pylint: disable=g-import-not-at-top
  from vma_jax import model as vma_model  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top
  from vma_jax import state as state_lib  # pylint: disable=g-import-not-at-top
  from vma_jax import train  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh()
  key = jax.random.key(0)
  result = dict(platform=platform, built_on=jax.default_backend(), train_step={}, eval_bound={})
  for dtype in DTYPES:
    config = default_config.get_config()
    config.model.dtype = dtype
    size = config.data.image_size
    # A blank stand-in for the background split (964 classes x 20 images): only shapes matter.
    labels_N = np.repeat(np.arange(964, dtype=np.int32), 20)
    split = types.SimpleNamespace(images_NxHxW=np.zeros((labels_N.size, size, size), np.uint8),
                                  labels_N=labels_N)
    data = episodes_lib.EpisodeData.from_split(split)
    state = jax.eval_shape(functools.partial(state_lib.create_train_state, config), key)
    episodes, sample_key = jax.eval_shape(train.make_episode_sampler(config, mesh), data, key,
                                          np.int32(0))
    step = train.make_train_step(config, mesh=mesh).trace(state, episodes, sample_key)
    text = step.lower(lowering_platforms=(platform,)).as_text()
    result["train_step"][dtype] = dict(
        batch=config.train.batch_size, memory=config.episodes.memory_size,
        samples=config.objective.num_importance, stablehlo_chars=len(text), **_op_counts(text))

    memory, samples, targets = 19, config.eval.num_importance, config.eval.batch_size
    cell = cells.Cell(2, memory)
    bound = cells.make_cell_fn(
        vma_model.make_model(config), cell, num_importance=samples,
        chunk_size=config.eval.chunk_size, mesh=mesh)
    targets_B = jax.ShapeDtypeStruct((targets,), np.int32)
    text = bound.trace(state.params, data, cells.cell_key(0, cell), targets_B).lower(
        lowering_platforms=(platform,)).as_text()
    result["eval_bound"][dtype] = dict(
        targets=targets, memory=memory, samples=samples, chunk_size=config.eval.chunk_size,
        stablehlo_chars=len(text), **_op_counts(text))
  return result


# ----------------------------------------------------------------------------------------
# report: the one JSON of a check.


def read_phases(path):
  """{name: {status, rc, seconds, limit_s, note}} from the phases file gpu_check.sh writes."""
  phases = {}
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except OSError:
    return phases
  for line in lines:
    name, status, rc, seconds, limit, note = (line.split("\t") + [""] * 6)[:6]
    phases[name] = dict(status=status, rc=int(rc) if rc.lstrip("-").isdigit() else None,
                        seconds=int(seconds) if seconds.isdigit() else None,
                        limit_s=int(limit) if limit.lstrip("-").isdigit() else None,
                        note=note or None)
  return phases


def train_summary(workdir):
  """The step time of a training run after its first (compiling) log interval, from its
  metrics.jsonl; its last bound; its checkpoints."""
  rows = []
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  except (OSError, ValueError):
    pass
  rows = [r for r in rows if isinstance(r.get("train/steps_per_sec"), (int, float))]
  config = load_json(os.path.join(workdir, "config.json")) or {}
  summary = dict(workdir=workdir, logged_steps=[r["step"] for r in rows])
  if config:
    summary.update(batch=config["train"]["batch_size"],
                   memory=config["episodes"]["memory_size"],
                   samples=config["objective"]["num_importance"], dtype=config["model"]["dtype"],
                   num_steps=config["train"]["num_steps"])
  if rows:
    first = rows[0]
    summary["first_interval_s"] = first["step"] / first["train/steps_per_sec"]
    summary["final_neg_bound"] = rows[-1].get("train/neg_bound")
  later = rows[1:]
  if later:
    step_s = [1.0 / r["train/steps_per_sec"] for r in later]
    timed = rows[-1]["step"] - rows[0]["step"]
    summary.update(step_s=statistics.median(step_s), step_s_min=min(step_s),
                   step_s_max=max(step_s), steps_timed=timed,
                   steps_per_sec=statistics.median(r["train/steps_per_sec"] for r in later))
    # The first interval's excess over its steps at the later rate: compilation, mostly.
    summary["first_interval_excess_s"] = summary["first_interval_s"] - rows[0]["step"] * (
        summary["step_s"])
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(checkpoint_dir) if n.isdigit()) if os.path.isdir(
      checkpoint_dir) else []
  summary["checkpoint_steps"] = steps
  return summary


def _bench_summary(benchmarks):
  summary = {}
  for name in ENTRIES:
    row = {}
    measured = [d for d in DTYPES if benchmarks.get(d, {}).get(name)]
    if not measured:
      continue
    for dtype in measured:
      entry = benchmarks[dtype][name]
      for field in ("median_s", "min_s", "gflops_per_s", "matmul_gflops_per_s",
                    "roofline_fraction", "peak_device_mb"):
        if field in entry:
          row[f"{dtype}_{field}"] = entry[field]
    if "float32_median_s" in row and "bfloat16_median_s" in row:
      row["bfloat16_speedup"] = row["float32_median_s"] / row["bfloat16_median_s"]
    if name in TARGET_S:
      row["target_s"] = TARGET_S[name]
      for dtype in measured:
        if "median_s" in benchmarks[dtype][name]:
          row[f"{dtype}_meets_target"] = row[f"{dtype}_median_s"] <= TARGET_S[name]
    summary[name] = row
  return summary


def report(work, mode, limit_s, elapsed_s, settings=None):
  """The check's one JSON, from the phases file and each phase's output in `work`."""
  results = os.path.join(work, "results")
  phases = read_phases(os.path.join(work, "phases.tsv"))
  for name, phase in phases.items():
    if phase["status"] != "finished":
      try:
        with open(os.path.join(work, "logs", f"{name}.log"), errors="replace") as f:
          phase["log_tail"] = f.read()[-1500:]
      except OSError:
        pass
  benchmarks = {}
  for dtype in DTYPES:
    for name in ENTRIES:
      entries = load_json(os.path.join(results, f"bench_{dtype}_{name}.json")) or []
      for entry in entries:
        benchmarks.setdefault(dtype, {})[entry["name"]] = entry
  precision_entries = load_json(os.path.join(results, "precision.json"))
  precision = None
  if precision_entries:
    worst = max(abs(e["gap"]) for e in precision_entries)
    precision = dict(
        cells=",".join(f"{e['max_classes']}:{e['memory_size']}" for e in precision_entries),
        num_targets=precision_entries[0]["num_targets"],
        num_importance=precision_entries[0]["num_importance"],
        max_abs_gap=worst, tolerance=TOLERANCE_NATS, within_tolerance=worst < TOLERANCE_NATS,
        gaps=precision_entries)
  train_dir = os.path.join(work, "train")
  finished = [n for n, p in phases.items() if p["status"] == "finished"]
  probe_result = load_json(os.path.join(results, "probe.json")) or {}
  out = dict(
      check="benchmarks/gpu_check.sh", mode=mode,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      commit=_git("rev-parse", "HEAD"), limit_s=limit_s, elapsed_s=elapsed_s,
      settings=settings or {},
      device_kind=probe_result.get("device_kind"), jax_version=probe_result.get("jax_version"),
      phases=phases, phases_finished=finished,
      all_finished=bool(phases) and len(finished) == len(phases),
      host=probe_result, install=load_json(os.path.join(results, "install.json")),
      summary=_bench_summary(benchmarks), benchmarks=benchmarks,
      train=train_summary(train_dir) if os.path.isdir(train_dir) else None,
      precision=precision)
  lowered = load_json(os.path.join(results, "lower.json"))
  if lowered is not None:
    out["lowered"] = lowered
  return out


def _print_report(out):
  print(f"{out['mode']}: {out['device_kind']}, jax {out['jax_version']}, "
        f"{len(out['phases_finished'])}/{len(out['phases'])} phases finished in "
        f"{out['elapsed_s']} s")
  for name, phase in out["phases"].items():
    if phase["status"] not in ("finished", "skipped"):
      print(f"  {name}: {phase['status']} (exit {phase['rc']}), see the log")
  skipped = [n for n, p in out["phases"].items() if p["status"] == "skipped"]
  if skipped:
    print(f"  skipped: {', '.join(skipped)}")
  for name, row in out["summary"].items():
    cells = [f"{d} median {row[f'{d}_median_s'] * 1e3:.2f} ms" for d in DTYPES
             if f"{d}_median_s" in row]
    print(f"  {name}: {', '.join(cells)}")
  if out["train"] and "step_s" in out["train"]:
    print(f"  train: {out['train']['step_s'] * 1e3:.2f} ms per step after compiling, "
          f"-L_K {out['train']['final_neg_bound']}")
  if out["precision"]:
    print(f"  precision: largest |gap| {out['precision']['max_abs_gap']:.4f} nats over cells "
          f"{out['precision']['cells']}")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("prepare", help="the wheels and the numpy cache to carry")
  p.add_argument("--carry", required=True)
  p.add_argument("--data-dir", help="where the numpy cache is (default $TFDS_DATA_DIR)")
  p.add_argument("--image-size", type=int, default=26)
  p.add_argument("--no-wheels", action="store_true", help="copy the data only")
  p.add_argument("--python-version", default="3.12", help="the GPU host's Python")
  p = sub.add_parser("install", help="install the missing packages from the carried wheels")
  p.add_argument("--wheels", required=True)
  p.add_argument("--target", required=True)
  p.add_argument("--carry")
  p.add_argument("--out", required=True)
  p = sub.add_parser("probe", help="the host's JAX and devices; the package's imports")
  p.add_argument("--mode", choices=("gpu", "dry-run"), required=True)
  p.add_argument("--out", required=True)
  p = sub.add_parser("lower", help="lower the benchmarked programs for an accelerator")
  p.add_argument("--platform", default="cuda")
  p.add_argument("--out", required=True)
  p = sub.add_parser("report", help="write the check's JSON")
  p.add_argument("--work", required=True)
  p.add_argument("--mode", choices=("gpu", "dry-run"), required=True)
  p.add_argument("--limit-s", type=int, required=True)
  p.add_argument("--elapsed-s", type=int, required=True)
  p.add_argument("--setting", action="append", default=[], help="NAME=VALUE to record")
  p.add_argument("--out", required=True)
  return parser


def _prepare_command(args) -> int:
  manifest = prepare(args.carry, args.data_dir, args.image_size, not args.no_wheels,
                     args.python_version)
  for name, f in manifest["files"].items():
    print(f"{f['bytes'] / 2**20:8.2f} MB  {name}")
  print(f"{manifest['total_mb']:.1f} MB in {args.carry}: carry it to the GPU host's "
        "repository root")
  return 0


def _install_command(args) -> int:
  result = install(args.wheels, args.target, args.carry)
  _dump(result, args.out)
  print(json.dumps({k: result[k] for k in ("present", "installed", "missing_without_wheel",
                                           "carry")}))
  bad = [n for n, v in result["carry"].items() if v != "ok"]
  if result["missing_without_wheel"] or bad:
    print(f"missing, with no wheel in {args.wheels}: {result['missing_without_wheel']}; "
          f"carried files not as prepared: {bad}. Run `bash benchmarks/gpu_check.sh "
          "--prepare` again and carry the folder.", file=sys.stderr)
    return 1
  return 0


def _probe_command(args) -> int:
  result = probe()
  _dump(result, args.out)
  print(json.dumps(result, indent=1))
  failed = {m: e for m, e in result["imports"].items() if e != "ok"}
  if failed:
    print(f"imports failed: {failed}", file=sys.stderr)
    return 4
  if args.mode == "gpu" and result["platform"] != "gpu":
    print(f"JAX runs on {result['platform']}, not a GPU: install jax[cuda13] or jax[cuda12] "
          "(README.md), or run with --dry-run.", file=sys.stderr)
    return 3
  return 0


def _lower_command(args) -> int:
  result = lower(args.platform)
  _dump(result, args.out)
  print(json.dumps(result, indent=1))
  return 0


def _report_command(args) -> int:
  settings = dict(s.split("=", 1) for s in args.setting)
  out = report(args.work, args.mode, args.limit_s, args.elapsed_s, settings)
  _dump(out, args.out)
  _print_report(out)
  return 0


_COMMANDS = {"prepare": _prepare_command, "install": _install_command,
             "probe": _probe_command, "lower": _lower_command, "report": _report_command}


def main(argv=None):
  args = _parser().parse_args(argv)
  return _COMMANDS[args.command](args)


if __name__ == "__main__":
  sys.exit(main())
