"""Every candidate speed-up of the recipe train step and the K=1000 bound, in one process.

    python benchmarks/gpu_variants.py --out gpu_variants                 # on the GPU host
    python benchmarks/gpu_variants.py --out v --only baseline --only bf16   # some variants
    python benchmarks/gpu_variants.py --out v --extra-xla-flags="--xla_gpu_autotune_level=0"
    python benchmarks/gpu_variants.py --out v --reference ../shared/reference/bench_ref_gpu.py
    python benchmarks/gpu_variants.py --list                             # the variants
    python benchmarks/gpu_variants.py --dry-run --out /tmp/v             # tiny, on the CPU

A variant changes one thing (or two) of the recipe step (configs/default.py: B=256 episodes,
T=32 memory images, K=4 samples), on random binary stand-in splits of Omniglot's size placed
on the device once, as benchmarks/workloads.py does:

  kind "step"  `vma_jax.train.make_train_step` on one batch of episodes drawn by
               `make_episode_sampler` (benchmarks/run.py's train_recipe; `baseline`);
  kind "scan"  S steps per jitted call: a lax.scan over S train steps, state donated, each
               step drawing its own episodes from fold_in(key, step) exactly as
               `make_episode_sampler` does (what a training loop of S steps per call runs);
  kind "eval"  `vma_jax.cells.make_cell_fn`, the bound of cell 2:19 at K=1000, with more
               targets per call than config.eval.batch_size (16).

The dtype is config.model.dtype; "distinct off" leaves episodes.distinct None (h on all
B(1+T) rows, not once per distinct image); the precision is jax.default_matmul_precision
around the tracing (convolutions and matrix products of float32 inputs).

Each variant is lowered and compiled (timed apart), called --warmup times, then --repeats
times, each call blocking on its results. Its entry holds the compile seconds, the median,
min and max milliseconds per step (per target for kind "eval"), the speed-up over `baseline`
(over `eval_b16` for kind "eval"), XLA's memory figures of the program, the process's peak
device memory so far (`device.memory_stats()`, where the backend has it), and its status:
"ok", "failed" (with the one-line error; the next variants still run) or "skipped" (with the
reason). A variant starts only if the time left of --budget-s is at least --per-program-s
times the programs it compiles; gpu_variants.json and gpu_variants.md (one table) are
rewritten after every variant, so an interrupted sitting leaves what it measured. Exit
status 1 if a variant failed, else 0 (skipped ones included).

XLA flags cannot change inside a process: each --extra-xla-flags value runs this script again
as a subprocess with those flags added to XLA_FLAGS (on --extra-xla-variants, default
`baseline`), after the variants here and if time is left. Pass the value with "=": JAX puts
every command-line argument that starts with "--xla" into its compilation cache keys.
--reference PATH runs the PyTorch reference's GPU timing script
(../shared/reference/bench_ref_gpu.py) last, if time is left, and records its recipe-step
time beside this process's. Compiled programs go to the persistent cache
JAX_COMPILATION_CACHE_DIR (default /tmp/vma_jax_variants_cache), which the subprocesses share.

--dry-run runs every variant at tiny sizes on the CPU (B=8, T=3, K=2, small networks on 8x8
images, S=3 instead of 10, eval T=3, K=4 in chunks of 2 with 1/16 of the targets), with
gpu_check.DRY_RUN_XLA_FLAGS added to XLA_FLAGS: what runs, not how fast.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import gpu_check  # noqa: E402  (after sys.path: run as a script too)

DEFAULT_CACHE_DIR = os.path.join(tempfile.gettempdir(), "vma_jax_variants_cache")
JSON_NAME, TABLE_NAME = "gpu_variants.json", "gpu_variants.md"


@dataclasses.dataclass(frozen=True)
class Variant:
  """One candidate: what it changes from the baseline, and how many programs it compiles."""

  name: str
  kind: str  # "step", "scan", "eval", or "custom" (with `build`)
  about: str  # what changes, for the table
  dtype: str = "float32"  # config.model.dtype
  precision: str | None = None  # jax.default_matmul_precision; None: JAX's default
  distinct: str = "auto"  # "auto": as make_episode_sampler decides; "off": episodes.distinct None
  steps: int = 1  # S train steps per call (kind "scan")
  targets: int = 16  # targets per call (kind "eval"), at the GPU sizes
  programs: int = 1  # large programs compiled: what the time budget counts
  build: Callable | None = None  # build(context) -> Prepared, for kind "custom"

  @property
  def reference(self) -> str:
    """The variant its speed-up is measured against."""
    return "eval_b16" if self.kind == "eval" else "baseline"


# In the order they run: the levers most likely to reach the targets first, so that a budget
# cut short still measures them. The baseline is f32, default precision, distinct auto, S=1.
VARIANTS = (
    Variant("baseline", "step", "f32, default precision, distinct auto, 1 step per call"),
    Variant("bf16", "step", "bfloat16 networks", dtype="bfloat16"),
    Variant("scan_s10", "scan", "10 steps per call (lax.scan), episodes drawn inside",
            steps=10),
    Variant("bf16_scan_s10", "scan", "bfloat16, 10 steps per call", dtype="bfloat16", steps=10),
    Variant("distinct_off", "step", "h on all B(1+T) rows (episodes.distinct None)",
            distinct="off"),
    Variant("bf16_distinct_off", "step", "bfloat16, distinct off", dtype="bfloat16",
            distinct="off"),
    Variant("scan_s1", "scan", "1 step per call, episodes drawn inside (scan_s10's unit)",
            steps=1),
    Variant("eval_b16", "eval", "bound 2:19, K=1000, 16 targets per call", targets=16),
    Variant("eval_b64", "eval", "64 targets per call", targets=64),
    Variant("eval_b256", "eval", "256 targets per call", targets=256),
    Variant("eval_b256_bf16", "eval", "256 targets per call, bfloat16", targets=256,
            dtype="bfloat16"),
    Variant("precision_tf32", "step", "matmul/conv precision tensorfloat32",
            precision="tensorfloat32"),
    Variant("precision_highest", "step", "matmul/conv precision highest (full f32)",
            precision="highest"),
    # The legacy name "bfloat16" is JAX's DEFAULT precision, the baseline's; the algorithm
    # preset applies to the matrix products (the dense layers), convolutions keep DEFAULT.
    Variant("precision_bf16_dots", "step", "dot algorithm BF16_BF16_F32 (dense layers only)",
            precision="BF16_BF16_F32"),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)


@dataclasses.dataclass(frozen=True)
class Sizes:
  """The sizes every variant runs at: the recipe's on a GPU, tiny ones for the dry run."""

  batch: int = 256  # B
  memory: int = 32  # T
  samples: int = 4  # K
  train_classes: int = 964  # the stand-in background split: classes x images per class
  train_per_class: int = 20
  test_classes: int = 659  # the stand-in test split
  test_per_class: int = 20
  eval_memory: int = 19  # cell 2:19
  eval_samples: int = 1000
  eval_chunk: int = 100  # config.eval.chunk_size
  targets_divisor: int = 1  # eval targets per call: the variant's / this
  scan_steps: dict | None = None  # S of a variant -> S run (None: as named)
  # The S steps of a scan variant as straight-line code, no loop (make_multi_step's unroll).
  scan_unroll: bool = False
  model: dict | None = None  # config.model overrides
  image_size: int = 26  # config.data.image_size
  cpu_kernels: str = "auto"

  def steps(self, steps: int) -> int:
    return (self.scan_steps or {}).get(steps, steps)

  def targets(self, targets: int) -> int:
    return max(1, targets // self.targets_divisor)


GPU_SIZES = Sizes()
# Tiny, and still every path: 8 x (1 + 3) rows drawn from 8 images repeat enough for the
# distinct rows to be worthwhile (U = 24 of 32 rows, with the fallback branch); 8x8 images;
# the stock layers, as a GPU runs them. Compiling is most of its time; scan_s10 runs 2 steps
# per call, and both scans are unrolled: XLA:CPU runs a loop body's gradient convs outside
# its conv library (about a second a step here against 0.2 s; docs/performance.md).
DRY_RUN_SIZES = Sizes(batch=8, memory=3, samples=2, train_classes=4, train_per_class=2,
                      test_classes=4, test_per_class=5, eval_memory=3, eval_samples=4,
                      eval_chunk=2, targets_divisor=16, scan_steps={10: 2}, scan_unroll=True,
                      model=dict(latent_dim=8, embed_dim=16, match_dim=16), image_size=8,
                      cpu_kernels="off")


def make_config(sizes: Sizes, dtype: str = "float32"):
  """configs/default.py at `sizes`, networks in `dtype`."""
  from benchmarks import workloads  # pylint: disable=g-import-not-at-top
  config = workloads._config(  # pylint: disable=protected-access
      sizes.batch, sizes.memory, sizes.samples, dtype, sizes.cpu_kernels)
  config.model.update(sizes.model or {})
  config.data.image_size = sizes.image_size
  return config


def make_multi_step(config, mesh, num_steps: int, distinct: str = "auto", unroll: bool = False):
  """Jitted `multi_step(state, data, train_key, first_step) -> (state, metrics_S)`, state
  donated: S = num_steps train steps in a lax.scan, step s drawing its episodes and samples
  with `make_episode_sampler` at step first_step + s, then taking `make_train_step`'s step:
  what S calls of the two do in a training loop, in one program (with `unroll`, the S steps
  one after another rather than in a loop: the same computation)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top
  from vma_jax import train  # pylint: disable=g-import-not-at-top

  sample = train.make_episode_sampler(config, mesh)
  train_step = train.make_train_step(config, mesh=mesh)
  replicated, _ = sharding.shardings(mesh)

  def multi_step(state, data, train_key, first_step):
    def body(state, step):
      episodes, sample_key = sample(data, train_key, step)
      if distinct == "off":
        episodes = episodes._replace(distinct=None)  # XLA drops the unused search
      return train_step(state, episodes, sample_key)

    steps_S = first_step + jnp.arange(num_steps, dtype=jnp.int32)
    # An unroll factor above S leaves no loop; unroll=True would keep a one-trip loop at S = 1.
    return jax.lax.scan(body, state, steps_S, unroll=num_steps + 1 if unroll else 1)

  return jax.jit(multi_step, in_shardings=(replicated,) * 4,
                 out_shardings=(replicated, replicated), donate_argnums=0)


# ----------------------------------------------------------------------------------------
# What a variant runs.


@dataclasses.dataclass
class Prepared:
  """A variant ready to compile: `fn.lower(*args)`, then `make_call(compiled)()` runs one
  timed call and blocks until its results are ready."""

  fn: Any  # a jax.jit-wrapped function
  args: tuple
  make_call: Callable[[Any], Callable[[], Any]]
  steps_per_call: int = 1  # train steps per call (kind "scan": S)
  units_per_call: int = 1  # what ms are quoted per: steps, or targets (kind "eval")
  unit: str = "step"
  extra: dict = dataclasses.field(default_factory=dict)


class Context:
  """What variants share, built once on first use: the mesh, the stand-in splits on the
  device, the initial train state (copied for each variant: the steps donate it), and one
  batch of episodes drawn by `make_episode_sampler`."""

  def __init__(self, sizes: Sizes, seed: int = 0):
    self.sizes, self.seed = sizes, seed
    self._cache = {}

  def _get(self, name, build):
    if name not in self._cache:
      self._cache[name] = build()
    return self._cache[name]

  @property
  def mesh(self):
    from vma_jax import sharding  # pylint: disable=g-import-not-at-top
    return self._get("mesh", sharding.make_mesh)

  @property
  def key(self):
    import jax  # pylint: disable=g-import-not-at-top
    return self._get("key", lambda: jax.random.key(self.seed))

  def data(self, split: str):
    """The stand-in "train" (background) or "test" split, on the device, replicated."""
    from benchmarks import workloads  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    s = self.sizes
    classes, per_class = ((s.train_classes, s.train_per_class) if split == "train" else
                          (s.test_classes, s.test_per_class))
    place = workloads._stand_in_data  # pylint: disable=protected-access
    return self._get(f"data_{split}", lambda: place(
        jax.random.fold_in(self.key, split == "test"), classes, per_class, s.image_size))

  def fresh_state(self):
    """A copy of the initial train state (parameters are float32 in every dtype)."""
    import jax  # pylint: disable=g-import-not-at-top
    from vma_jax import state as state_lib  # pylint: disable=g-import-not-at-top
    state = self._get("state", lambda: state_lib.init_train_state(
        make_config(self.sizes), self.key, self.mesh))
    return jax.tree.map(lambda x: x.copy(), state)

  def episodes(self):
    """(episodes, sample_key) of step 0, the distinct rows as the sampler decides them."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    from vma_jax import train  # pylint: disable=g-import-not-at-top
    return self._get("episodes", lambda: train.make_episode_sampler(
        make_config(self.sizes), self.mesh)(self.data("train"), self.key, np.int32(0)))


def _train_fields(sizes: Sizes, episodes, distinct: str) -> dict:
  """The rows h runs on (U distinct rows, or all N = B(1+T)), and the hand-counted GFLOP of
  a step (benchmarks/flops.py; only at the recipe's network sizes, which it assumes)."""
  from benchmarks import flops as flops_lib  # pylint: disable=g-import-not-at-top
  from vma_jax import distinct as distinct_lib  # pylint: disable=g-import-not-at-top
  rows = episodes.distinct
  fields = dict(rows=sizes.batch * (1 + sizes.memory))
  if rows is None or distinct == "off":
    fields.update(distinct_rows=None, distinct_note="off" if distinct == "off" else
                  "not worthwhile at this size (distinct.worthwhile)")
  else:
    fields.update(distinct_rows=int(rows.row_U.shape[0]),
                  num_distinct=int(distinct_lib.num_distinct(rows)),
                  distinct_fits=bool(distinct_lib.fits(rows)))
  if not sizes.model and sizes.image_size == 26:
    fields["model_gflop_per_step"] = flops_lib.train_step_flops(
        sizes.batch, sizes.memory, sizes.samples, match_rows=fields["distinct_rows"]) / 1e9
  return fields


def _prepare_step(variant: Variant, context: Context) -> Prepared:
  import jax  # pylint: disable=g-import-not-at-top
  from vma_jax import train  # pylint: disable=g-import-not-at-top
  sizes = context.sizes
  config = make_config(sizes, variant.dtype)
  episodes, sample_key = context.episodes()
  extra = _train_fields(sizes, episodes, variant.distinct)
  if variant.distinct == "off":
    episodes = episodes._replace(distinct=None)
  step = train.make_train_step(config, mesh=context.mesh)
  state = context.fresh_state()

  def make_call(compiled):
    holder = dict(state=state, i=0)

    def call():
      # A new sample key per call, as run.py's train entries do.
      holder["i"] += 1
      holder["state"], metrics = compiled(holder["state"], episodes,
                                          jax.random.fold_in(sample_key, holder["i"]))
      jax.block_until_ready((holder["state"], metrics))
      return metrics

    return call

  return Prepared(step, (state, episodes, sample_key), make_call, extra=extra)


def _prepare_scan(variant: Variant, context: Context) -> Prepared:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sizes = context.sizes
  num_steps = sizes.steps(variant.steps)
  config = make_config(sizes, variant.dtype)
  extra = _train_fields(sizes, context.episodes()[0], variant.distinct)
  multi_step = make_multi_step(config, context.mesh, num_steps, variant.distinct,
                               unroll=sizes.scan_unroll)
  state, data = context.fresh_state(), context.data("train")

  def make_call(compiled):
    holder = dict(state=state, i=0)

    def call():
      # Each call draws the episodes of its own S steps: steps i*S .. i*S + S - 1.
      first_step = np.int32(holder["i"] * num_steps)
      holder["i"] += 1
      holder["state"], metrics_S = compiled(holder["state"], data, context.key, first_step)
      jax.block_until_ready((holder["state"], metrics_S))
      return metrics_S

    return call

  return Prepared(multi_step, (state, data, context.key, np.int32(0)), make_call,
                  steps_per_call=num_steps, units_per_call=num_steps, extra=extra)


def _prepare_eval(variant: Variant, context: Context) -> Prepared:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vma_jax import cells  # pylint: disable=g-import-not-at-top
  from vma_jax import model as vma_model  # pylint: disable=g-import-not-at-top
  from vma_jax import sharding  # pylint: disable=g-import-not-at-top
  sizes = context.sizes
  targets = sizes.targets(variant.targets)
  sharding.check_batch_size(targets, context.mesh, "targets per call")
  config = make_config(sizes, variant.dtype)
  cell = cells.Cell(2, sizes.eval_memory)
  bound = cells.make_cell_fn(vma_model.make_model(config), cell,
                             num_importance=sizes.eval_samples, chunk_size=sizes.eval_chunk,
                             mesh=context.mesh)
  _, batch_sharding = sharding.shardings(context.mesh)
  targets_B = jax.device_put(jnp.arange(targets, dtype=jnp.int32), batch_sharding)
  params = context.fresh_state().params  # float32 in every dtype, as a checkpoint's
  args = (params, context.data("test"), cells.cell_key(0, cell), targets_B)

  def make_call(compiled):
    def call():
      values = compiled(*args)
      return jax.block_until_ready(values)

    return call

  return Prepared(bound, args, make_call, units_per_call=targets, unit="target",
                  extra=dict(targets=targets, cell=str(cell), memory=sizes.eval_memory,
                             samples=sizes.eval_samples, chunk_size=sizes.eval_chunk))


_PREPARE = {"step": _prepare_step, "scan": _prepare_scan, "eval": _prepare_eval}


# ----------------------------------------------------------------------------------------
# Running and recording.


def _one_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
  return text if len(text) <= 300 else text[:297] + "..."


def _xla_memory(compiled) -> dict:
  try:
    mem = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return {}  # not every backend reports it
  if mem is None:
    return {}
  return dict(xla_temp_mb=mem.temp_size_in_bytes / 2**20,
              xla_argument_mb=mem.argument_size_in_bytes / 2**20,
              xla_output_mb=mem.output_size_in_bytes / 2**20)


def _device_memory() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = jax.devices()[0].memory_stats() or {}
  except Exception:  # pylint: disable=broad-except
    stats = {}
  out = {}
  if "peak_bytes_in_use" in stats:  # the process's peak so far: it never goes down
    out["process_peak_device_mb"] = stats["peak_bytes_in_use"] / 2**20
  if "bytes_in_use" in stats:
    out["device_in_use_mb"] = stats["bytes_in_use"] / 2**20
  return out


def _last_loss(outputs) -> dict:
  """The last step's loss of a train call's metrics, and whether it is finite (a variant
  that runs fast but diverges is no lever); nothing for the bound."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not (isinstance(outputs, dict) and "loss" in outputs):
    return {}
  loss = float(np.asarray(outputs["loss"]).reshape(-1)[-1])
  return dict(last_loss=loss if math.isfinite(loss) else None,
              loss_finite=math.isfinite(loss))


def measure(variant: Variant, context: Context, warmup: int, repeats: int) -> dict:
  """Compiles and times one variant; returns its entry (raises if it fails)."""
  from benchmarks import timing  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  prepared = (variant.build(context) if variant.build is not None else
              _PREPARE[variant.kind](variant, context))
  precision = (jax.default_matmul_precision(variant.precision) if variant.precision
               else contextlib.nullcontext())
  # Traced under the precision; the compiled program is called directly, so nothing is
  # traced or compiled again outside it.
  with precision:
    start = time.perf_counter()
    lowered = prepared.fn.lower(*prepared.args)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
  call, last = prepared.make_call(compiled), {}

  def timed():
    last["outputs"] = call()

  start = time.perf_counter()
  timed()
  first_call_s = time.perf_counter() - start
  wall, _ = timing.times(timed, warmup=max(warmup - 1, 0), repeats=repeats)
  per_unit_ms = [t * 1e3 / prepared.units_per_call for t in wall]
  entry = dict(
      lower_s=lower_s, compile_s=compile_s, first_call_s=first_call_s,
      steps_per_call=prepared.steps_per_call, unit=prepared.unit,
      units_per_call=prepared.units_per_call,
      median_call_ms=statistics.median(wall) * 1e3,
      ms=statistics.median(per_unit_ms), min_ms=min(per_unit_ms), max_ms=max(per_unit_ms),
      times_ms=per_unit_ms, **prepared.extra, **_xla_memory(compiled), **_device_memory())
  if "model_gflop_per_step" in entry:
    entry["tflops_per_s"] = entry["model_gflop_per_step"] / entry["ms"]
  entry.update(_last_loss(last["outputs"]))
  return entry


def _skip_reason(variant: Variant, left_s: float, per_program_s: float) -> str | None:
  needed = per_program_s * variant.programs
  if left_s < needed:
    return (f"time budget: {left_s:.0f} s left, {needed:.0f} s needed for "
            f"{variant.programs} program(s)")
  return None


def _speedups(entries: list[dict]) -> None:
  """Each ok entry's speed-up over its reference variant (same unit), in place."""
  by_name = {e["name"]: e for e in entries}
  for e in entries:
    ref = by_name.get(e.get("reference"))
    e["speedup"] = (ref["ms"] / e["ms"] if e["status"] == "ok" and ref is not None
                    and ref["status"] == "ok" and e["ms"] > 0 else None)


def run_variants(variants, context: Context, *, warmup: int, repeats: int, budget_s: float,
                 per_program_s: float, start: float, on_entry: Callable | None = None,
                 log=print) -> list[dict]:
  """Measures each variant in turn; a failure or a skip is recorded and the next one runs.
  `on_entry(entries)` is called after each (to write the results so far)."""
  entries = []
  for variant in variants:
    entry = dict(name=variant.name, kind=variant.kind, about=variant.about,
                 dtype=variant.dtype, precision=variant.precision or "default",
                 distinct=variant.distinct, reference=variant.reference,
                 programs=variant.programs)
    left = max(budget_s - (time.monotonic() - start), 0.0)
    reason = _skip_reason(variant, left, per_program_s)
    if reason:
      entry.update(status="skipped", error=None, note=reason)
      log(f"[{variant.name}] skipped: {reason}")
    else:
      log(f"[{variant.name}] {variant.about} ...")
      variant_start = time.monotonic()
      try:
        entry.update(measure(variant, context, warmup, repeats))
        entry.update(status="ok", error=None)
        log(f"[{variant.name}] compile {entry['compile_s']:.1f} s, {entry['ms']:.3f} ms per "
            f"{entry['unit']} (min {entry['min_ms']:.3f}, max {entry['max_ms']:.3f})")
      except Exception as e:  # pylint: disable=broad-except
        entry.update(status="failed", error=_one_line(e))
        log(f"[{variant.name}] failed: {entry['error']}")
      entry["wall_s"] = time.monotonic() - variant_start
      gc.collect()  # drop the failed or finished variant's buffers before the next
    entries.append(entry)
    _speedups(entries)
    if on_entry is not None:
      on_entry(entries)
  return entries


# ----------------------------------------------------------------------------------------
# The phases in subprocesses: XLA flags, the reference.


def run_xla_phase(flag_sets, args, start: float, log=print) -> list[dict]:
  """Each value of --extra-xla-flags: this script again in a subprocess with those flags added
  to XLA_FLAGS, on --extra-xla-variants; its entries, renamed xla<i>_<variant>."""
  entries = []
  names = args.extra_xla_variants or ["baseline"]
  for i, flags in enumerate(flag_sets):
    left = max(args.budget_s - (time.monotonic() - start), 0.0)
    # The child's own start-up (imports, data, state) counts as one more program.
    needed = args.per_program_s * (len(names) + 1)
    base = dict(kind="xla", xla_flags=flags, programs=len(names) + 1)
    if left < needed:
      note = (f"time budget: {left:.0f} s left, {needed:.0f} s needed for {len(names) + 1} "
              "program(s)")
      entries += [dict(base, name=f"xla{i}_{n}", about=f"{n}, XLA_FLAGS += {flags}",
                       reference=n, status="skipped", error=None, note=note) for n in names]
      log(f"[xla{i}] skipped: {note}")
      continue
    with tempfile.TemporaryDirectory() as tmp:
      argv = [sys.executable, os.path.abspath(__file__), "--out", tmp,
              "--warmup", str(args.warmup), "--repeats", str(args.repeats),
              "--budget-s", str(max(left - 10, 0)), "--per-program-s", str(args.per_program_s)]
      argv += [a for n in names for a in ("--only", n)]
      if args.dry_run:
        argv.append("--dry-run")
      env = dict(os.environ)
      env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), flags) if f)
      log(f"[xla{i}] XLA_FLAGS={env['XLA_FLAGS']} ...")
      error = None
      try:
        proc = subprocess.run(argv, env=env, cwd=_ROOT, capture_output=True, text=True,
                              timeout=max(left - 5, 1), check=False)
        if proc.returncode != 0:
          tail = (proc.stderr.strip().splitlines() or [""])[-1]
          error = f"exit {proc.returncode}: {tail}"[:300]
      except subprocess.TimeoutExpired:
        error = f"timed out after {left - 5:.0f} s"
      child = gpu_check.load_json(os.path.join(tmp, JSON_NAME)) or {}
    by_name = {e["name"]: e for e in child.get("variants", [])}
    for n in names:
      e = dict(by_name.get(n) or dict(status="failed", error=error or "no entry written"))
      # Compared with the same variant here, without the flags.
      e.update(base, name=f"xla{i}_{n}", about=f"{n}, XLA_FLAGS += {flags}", reference=n)
      entries.append(e)
      log(f"[xla{i}_{n}] {e['status']}" + (f": {e.get('error') or e.get('note')}"
                                             if e["status"] != "ok" else ""))
  return entries


def run_reference(path: str, args, start: float, entries: list[dict], log=print) -> dict:
  """The reference's bench_ref_gpu.py in a subprocess; its recipe-step time and the ratio."""
  result = dict(script=path, python=args.reference_python)
  if args.dry_run:
    return dict(result, status="skipped",
                note="a CPU dry run does not time the reference (a GPU timing script)")
  left = max(args.budget_s - (time.monotonic() - start), 0.0)
  if left < args.reference_s:
    return dict(result, status="skipped",
                note=f"time budget: {left:.0f} s left, {args.reference_s:.0f} s needed")
  env = dict(os.environ)
  env.setdefault("REF_SRC", os.path.join(os.path.dirname(os.path.abspath(path)), "src"))
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "ref_gpu.json")
    argv = [args.reference_python, path, "--out", out, "--repeats", str(args.repeats),
            "--cudnn", args.reference_cudnn]
    log(f"[reference] {' '.join(argv)} ...")
    begun = time.monotonic()
    error = None
    try:
      proc = subprocess.run(argv, env=env, capture_output=True, text=True,
                            timeout=max(left - 5, 1), check=False)
      stdout = proc.stdout
      if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        error = f"exit {proc.returncode}: {tail}"[:300]
    except subprocess.TimeoutExpired as e:
      stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (
          e.stdout or "")
      error = f"timed out after {max(left - 5, 1):.0f} s"
    except OSError as e:
      return dict(result, status="failed", error=_one_line(e))
    result["wall_s"] = time.monotonic() - begun
    reference = gpu_check.load_json(out)
  if not isinstance(reference, list):
    # Cut short: the entries it printed, one JSON object a line, as it went.
    reference = []
    for line in stdout.splitlines():
      try:
        reference.append(json.loads(line))
      except ValueError:
        pass
  recipe = [e for e in reference if e.get("name") == "train_recipe" and "median_s" in e]
  result.update(status="ok" if error is None else "failed", error=error, entries=reference)
  if recipe:
    fastest = min(recipe, key=lambda e: e["median_s"])  # over its cudnn.benchmark settings
    result.update(recipe_ms=fastest["median_s"] * 1e3,
                  cudnn_benchmark=fastest.get("cudnn_benchmark"),
                  peak_device_mb=fastest.get("peak_device_mb"))
    # How many times this project's step time the reference's is: baseline and best variant.
    baseline = next((e for e in entries if e["name"] == "baseline"), None)
    if baseline is not None and baseline.get("status") == "ok":
      result["reference_over_baseline"] = result["recipe_ms"] / baseline["ms"]
    steps = [e for e in entries if e["status"] == "ok" and e.get("unit") == "step"]
    if steps:
      best = min(steps, key=lambda e: e["ms"])
      result.update(best_variant=best["name"],
                    reference_over_best=result["recipe_ms"] / best["ms"])
  elif error is None:
    result.update(status="failed", error="no train_recipe entry in the reference's JSON")
  return result


# ----------------------------------------------------------------------------------------
# Output.


def _write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def _fmt(value, spec):
  return "–" if value is None else format(value, spec)


def table(result: dict) -> str:
  """One Markdown table of every variant (and the reference)."""
  rows = ["| variant | what changes | status | compile s | ms per step (eval: per target) "
          "| min ms | max ms | speed-up | process peak device MB | XLA temp MB | note |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
  for e in result["variants"] + result.get("xla_variants", []):
    ok = e["status"] == "ok"
    note = e.get("error") or e.get("note") or ""
    if ok and e.get("steps_per_call", 1) > 1:
      note = f"S={e['steps_per_call']} steps per call"
    if ok and e.get("unit") == "target":
      note = f"targets per call: {e['targets']}, {e['median_call_ms']:.2f} ms per call"
    speedup = e.get("speedup")
    rows.append("| " + " | ".join([
        f"`{e['name']}`", e.get("about", ""), e["status"],
        _fmt(e.get("compile_s") if ok else None, ".1f"),
        _fmt(e.get("ms") if ok else None, ".3f"),
        _fmt(e.get("min_ms") if ok else None, ".3f"),
        _fmt(e.get("max_ms") if ok else None, ".3f"),
        "–" if speedup is None else f"{speedup:.2f}x",
        _fmt(e.get("process_peak_device_mb"), ".0f"), _fmt(e.get("xla_temp_mb"), ".0f"),
        note.replace("|", "/")]) + " |")
  ref = result.get("reference")
  if ref and ref.get("script"):  # asked for with --reference
    # Its speed-up is the baseline's: below 1, the reference is that much slower.
    ratio = ref.get("reference_over_baseline")
    note = ref.get("error") or ref.get("note") or ""
    if "recipe_ms" in ref:
      note = f"cudnn.benchmark {ref.get('cudnn_benchmark')}" + (f"; {note}" if note else "")
    rows.append("| " + " | ".join([
        "reference (PyTorch)", "its recipe step, same sitting", ref["status"], "–",
        _fmt(ref.get("recipe_ms"), ".3f"), "–", "–",
        "–" if ratio is None else f"{1 / ratio:.2f}x", _fmt(ref.get("peak_device_mb"), ".0f"),
        "–", note.replace("|", "/")]) + " |")
  head = (f"{result['mode']}: {result['device']['kind']} x{result['device']['count']}, "
          f"jax {result['jax_version']}, {result['date']}, B={result['sizes']['batch']} "
          f"T={result['sizes']['memory']} K={result['sizes']['samples']}, "
          f"{result['settings']['repeats']} timed calls per variant")
  return head + "\n\n" + "\n".join(rows) + "\n"


def write_outputs(result: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  _write_atomic(os.path.join(out_dir, JSON_NAME), json.dumps(result, indent=1) + "\n")
  _write_atomic(os.path.join(out_dir, TABLE_NAME), table(result))


def _header(args, sizes: Sizes) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  cache_dir = jax.config.jax_compilation_cache_dir
  return dict(
      script="benchmarks/gpu_variants.py", mode="dry-run" if args.dry_run else "gpu",
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      argv=sys.argv[1:], jax_version=jax.__version__, jaxlib_version=jaxlib.__version__,
      device=dict(platform=devices[0].platform, kind=devices[0].device_kind,
                  count=len(devices)),
      sizes=dataclasses.asdict(sizes),
      settings=dict(repeats=args.repeats, warmup=args.warmup, budget_s=args.budget_s,
                    per_program_s=args.per_program_s, xla_flags=os.environ.get("XLA_FLAGS", ""),
                    compilation_cache_dir=cache_dir,
                    cache_entries_at_start=(len(os.listdir(cache_dir))
                                            if cache_dir and os.path.isdir(cache_dir) else 0)),
      variants=[], xla_variants=[], xla_note=None, reference=None)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", help="folder for gpu_variants.json and gpu_variants.md")
  parser.add_argument("--only", action="append", choices=VARIANT_NAMES,
                      help="run only this variant (repeatable; default all, in order)")
  parser.add_argument("--list", action="store_true", help="print the variants and exit")
  parser.add_argument("--repeats", type=int, help="timed calls per variant (20; dry run 2)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling "
                      "(the first one is timed apart: first_call_s)")
  parser.add_argument("--budget-s", type=float, default=420.0,
                      help="seconds for the whole script, start-up included")
  parser.add_argument("--per-program-s", type=float,
                      help="seconds a variant needs left per program it compiles (60; dry "
                      "run 1)")
  # Not named --xla-...: JAX puts arguments that start with "--xla" in its cache keys.
  parser.add_argument("--extra-xla-flags", action="append", default=[],
                      help="XLA flags of one more subprocess, as --extra-xla-flags=FLAGS "
                      "(repeatable)")
  parser.add_argument("--extra-xla-variants", action="append", choices=VARIANT_NAMES,
                      help="the variants each --extra-xla-flags subprocess runs (default "
                      "baseline)")
  parser.add_argument("--reference", help="the reference's bench_ref_gpu.py, run last")
  parser.add_argument("--reference-python", default="python3",
                      help="the Python with PyTorch that runs --reference")
  parser.add_argument("--reference-cudnn", default="1",
                      help="its --cudnn: cudnn.benchmark settings to time")
  parser.add_argument("--reference-s", type=float, default=120.0,
                      help="seconds the reference needs left to start")
  parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
  return parser


def main(argv=None) -> int:
  start = time.monotonic()
  args = _parser().parse_args(argv)
  if args.list:
    for v in VARIANTS:
      print(f"{v.name:20s} {v.kind:5s} {v.about}")
    return 0
  if not args.out:
    _parser().error("--out is required")
  if args.repeats is None:
    args.repeats = 2 if args.dry_run else 20
  if args.repeats < 1 or args.warmup < 0:
    _parser().error("need --repeats >= 1 and --warmup >= 0")
  if args.per_program_s is None:
    args.per_program_s = 1.0 if args.dry_run else 60.0
  if args.dry_run:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # Read when JAX starts its CPU backend: the XLA-flag subprocesses get them too.
    os.environ["XLA_FLAGS"] = gpu_check.with_dry_run_xla_flags(os.environ.get("XLA_FLAGS"))
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", DEFAULT_CACHE_DIR)
  import jax  # pylint: disable=g-import-not-at-top
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

  sizes = DRY_RUN_SIZES if args.dry_run else GPU_SIZES
  result = _header(args, sizes)
  names = args.only or list(VARIANT_NAMES)
  variants = [v for v in VARIANTS if v.name in names]
  if not args.extra_xla_flags:
    result["xla_note"] = ("no --extra-xla-flags given: XLA flags cannot change inside one "
                          "process, so that phase (one subprocess per flag set) was skipped")

  def save(entries=None):
    if entries is not None:
      result["variants"] = entries
    result["elapsed_s"] = time.monotonic() - start
    write_outputs(result, args.out)

  save()
  context = Context(sizes)
  run_variants(variants, context, warmup=args.warmup, repeats=args.repeats,
               budget_s=args.budget_s, per_program_s=args.per_program_s, start=start,
               on_entry=save)
  if args.extra_xla_flags:
    result["xla_variants"] = run_xla_phase(args.extra_xla_flags, args, start)
    _speedups(result["variants"] + result["xla_variants"])
    save()
  if args.reference:
    result["reference"] = run_reference(args.reference, args, start,
                                        result["variants"] + result["xla_variants"])
    print(f"[reference] {result['reference']['status']}"
          + (f": {result['reference'].get('error') or result['reference'].get('note')}"
             if result["reference"]["status"] != "ok" else
             f", recipe step {result['reference'].get('recipe_ms')} ms"))
  else:
    result["reference"] = dict(status="skipped", note="--reference not given")
  save()
  print()
  print(table(result))
  print(f"wrote {os.path.join(args.out, JSON_NAME)} and {TABLE_NAME} in "
        f"{result['elapsed_s']:.1f} s")
  failed = [e["name"] for e in result["variants"] + result["xla_variants"]
            if e["status"] == "failed"]
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
