"""Table 1 on one accelerator host in one command: train the recipe, evaluate the 14 cells,
draw the figures, export the trained model; or, when time runs out, pack the run to resume.

    bash benchmarks/gpu_check.sh --prepare                       # here: wheels and data to carry
    bash benchmarks/table1.sh OUT [--workdir W] [--resume PACK] [--deadline SECONDS] \
        [--dtype bfloat16] [--steps N]                           # on the GPU host
    bash benchmarks/table1.sh OUT --dry-run                      # every phase, tiny, on the CPU

Phases, each a command of the project run as a child process, each logged:
  install   the packages a bare host lacks, from the carried wheels (`gpu_check.py install`)
  unpack    --resume PACK: the packed workdir of an earlier sitting into W (a new folder)
  train     train.py --config=configs/default.py --workdir=W: resumes from W's newest
            checkpoint; at the deadline it gets SIGTERM, saves the step in flight and stops
  evaluate  evaluate.py on W: Table 1's 14 cells at K = 1000 on all 13,180 test targets
            (cells finished are kept: an evaluation cut short continues where it stopped)
  views     the labelled sample sheet, the address posterior and the training curves
  export    the trained parameters with their config and results (`vma_jax.pretrained`)
  pack      an unfinished run: W's config, metrics, newest checkpoint and evaluation so far
  report    OUT/table1.json: the settings, each phase's status, time and log tail, the results

OUT receives at most 8 files, none over 16 MB (what a narrow pipe from a rented host carries
back): table1.json and, when the run is finished, results.md, bound_vs_T.png, kl_vs_T.png,
samples.png, posterior.png, training_curves.png and model.tar (params.msgpack, config.json,
model.json, results.{md,json,csv}); when it is not, workdir.tar.gz (resume with --resume) and
the figures made so far. With --deadline SECONDS (counted from the start) training stops in
time to leave workdir.tar.gz in OUT; a later sitting given it continues from its step.

Exit status: 0 when Table 1 is complete, 3 when the run was packed to continue, 1 when a
phase failed (table1.json says which), 2 for a usage error.
Only the standard library is imported here: `install` runs before the packages are there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILES, MAX_FILE_MB = 8, 16
PACK = "workdir.tar.gz"
MODEL = "model.tar"
REPORT = "table1.json"
FIGURES = ("bound_vs_T.png", "kl_vs_T.png")
# What a resumed run needs of a workdir (besides its newest checkpoint), and what it had done.
PACKED_FILES = ("config.json", "config_history.jsonl", "metrics.jsonl")
PACKED_DIRS = ("eval",)
EXIT_COMPLETE, EXIT_FAILED, EXIT_USAGE, EXIT_PACKED = 0, 1, 2, 3


def _usage(message: str):
  print(f"table1: {message}", file=sys.stderr)
  sys.exit(EXIT_USAGE)


def settings(dry_run: bool, dtype: str, steps: int | None, eval_batch: int | None) -> dict:
  """The commands' arguments: the recipe at full size, or every path at tiny sizes."""
  if not dry_run:
    return dict(
        # Validation and image grids every 20,000 steps, not 5,000: each costs seconds.
        train=[f"--config.model.dtype={dtype}", "--config.train.log_every=500",
               "--config.train.validate_every=20000", "--config.train.image_every=20000"]
        + ([f"--config.train.num_steps={steps}"] if steps else []),
        evaluate=["--cells=table1", "--num_importance=1000", "--num_targets=0",
                  f"--batch_size={eval_batch or 256}"]
        + ([] if dtype == "float32" else [f"--dtype={dtype}"]),
        memory_classes=(7, 21, 40), per_class=3, grace_s=90, pack_reserve_s=30)
  return dict(
      train=[f"--config.model.dtype={dtype}", f"--config.train.num_steps={steps or 6}",
             "--config.train.log_every=100", "--config.train.batch_size=4",
             "--config.train.validate_every=0", "--config.train.image_every=0",
             "--config.validation.batch_size=4", "--config.validation.num_targets=4",
             "--config.validation.num_importance=2", "--config.validation.chunk_size=2",
             "--config.train.tensorboard=False", "--config.episodes.memory_size=4",
             "--config.episodes.per_class=2", "--config.model.latent_dim=8",
             "--config.model.embed_dim=16", "--config.model.match_dim=16",
             "--config.objective.num_importance=2", "--cpu_devices=1"],
      evaluate=["--cells=1:1,2:3", "--num_importance=4", "--num_targets=4",
                f"--batch_size={eval_batch or 2}", "--chunk_size=2", "--cpu_devices=1"]
      + ([] if dtype == "float32" else [f"--dtype={dtype}"]),
      memory_classes=(0, 1), per_class=2, grace_s=30, pack_reserve_s=15)


class Sitting:
  """The phases of one sitting, their times and statuses, against one deadline."""

  def __init__(self, work: str, deadline_s: float | None):
    self.work = work
    self.start = time.monotonic()
    self.deadline = None if deadline_s is None else self.start + deadline_s
    self.phases: list[dict] = []
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)

  def left(self, reserve_s: float = 0.0) -> float | None:
    return None if self.deadline is None else self.deadline - time.monotonic() - reserve_s

  def run(self, name: str, command: list[str], *, reserve_s: float = 0.0,
          grace_s: float = 60.0, ok=(0,), env: dict | None = None) -> dict:
    """Runs `command` until it ends or until the deadline less `reserve_s`; then SIGTERM,
    and SIGKILL after `grace_s`. Returns the phase's record (also kept in self.phases)."""
    limit = self.left(reserve_s)
    phase = dict(name=name, command=" ".join(command), limit_s=limit and round(limit, 1))
    if limit is not None and limit < 5:
      return self.record(phase, "skipped", None, 0.0, "no time left before the deadline")
    log_path = os.path.join(self.work, "logs", f"{name}.log")
    print(f"[{name}] {phase['command']}", flush=True)
    start, stopped = time.monotonic(), False
    with open(log_path, "w") as log:
      process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True)
      try:
        rc = process.wait(timeout=limit)
      except subprocess.TimeoutExpired:
        stopped = True
        process.send_signal(signal.SIGTERM)
        try:
          rc = process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
          os.killpg(process.pid, signal.SIGKILL)
          rc = process.wait()
    status = "finished" if rc in ok else "stopped" if stopped else "failed"
    return self.record(phase, status, rc, time.monotonic() - start, _tail(log_path))

  def record(self, phase: dict, status: str, rc, seconds: float, log_tail: str) -> dict:
    phase.update(status=status, rc=rc, seconds=round(seconds, 1), log_tail=log_tail)
    self.phases.append(phase)
    print(f"[{phase['name']}] {status} (exit {rc}) after {seconds:.0f} s", flush=True)
    return phase

  def python(self, name: str, args: list[str], **kwargs) -> dict:
    return self.run(name, [sys.executable, *args], **kwargs)


def _tail(path: str, chars: int = 3000) -> str:
  with open(path, errors="replace") as f:
    return f.read()[-chars:]


def newest_step(workdir: str) -> int | None:
  """The newest finished checkpoint's step in workdir (Orbax's folder names), or None."""
  folder = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return max(steps) if steps else None


def pack(workdir: str, path: str) -> dict:
  """workdir's config, metrics, evaluation so far and newest checkpoint as one .tar.gz whose
  members are relative to the workdir (`unpack` restores them)."""
  step = newest_step(workdir)
  with tarfile.open(path + ".tmp", "w:gz") as tar:
    for name in PACKED_FILES + PACKED_DIRS:
      if os.path.exists(os.path.join(workdir, name)):
        tar.add(os.path.join(workdir, name), arcname=name)
    if step is not None:
      name = os.path.join("checkpoints", str(step))
      tar.add(os.path.join(workdir, name), arcname=name)
  os.replace(path + ".tmp", path)
  return dict(step=step, mb=round(os.path.getsize(path) / 2**20, 2))


def unpack(path: str, workdir: str) -> int | None:
  """Extracts a `pack` into workdir, which must not hold a run; returns its step."""
  if os.path.exists(os.path.join(workdir, "config.json")):
    raise ValueError(f"--workdir {workdir} already holds a run: give a new --workdir to "
                     "unpack --resume into, or drop --resume to continue that run")
  with tarfile.open(path) as tar:
    members = tar.getmembers()
    bad = [m.name for m in members if m.name.startswith(("/", "..")) or not
           (m.isfile() or m.isdir())]
    if bad or not any(m.name == "config.json" for m in members):
      raise ValueError(f"{path} is not a workdir packed by table1 (no config.json, or "
                       f"entries outside it: {bad[:3]})")
    tar.extractall(workdir, filter="data")
  return newest_step(workdir)


def _sizes(out: str) -> dict:
  return {n: round(os.path.getsize(os.path.join(out, n)) / 2**20, 3)
          for n in sorted(os.listdir(out)) if os.path.isfile(os.path.join(out, n))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("out", help="where the results go (at most 8 files, 16 MB each)")
  parser.add_argument("--workdir", help="the run's workdir (default: WORK/train); a run "
                      "there is resumed")
  parser.add_argument("--resume", help=f"a {PACK} of an earlier sitting to continue")
  parser.add_argument("--deadline", type=float, help="seconds from now by which OUT must be "
                      "written; training stops in time to pack the run")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
  parser.add_argument("--eval-batch-size", type=int, help="targets at once (default 256)")
  parser.add_argument("--work", help="scratch: logs, export (default: a new /tmp folder)")
  parser.add_argument("--carry", default=os.path.join(ROOT, ".gpu_check"),
                      help="the folder `gpu_check.sh --prepare` filled (wheels, data)")
  parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
  args = parser.parse_args(argv)
  if args.resume and not os.path.isfile(args.resume):
    _usage(f"--resume {args.resume}: no such file; give the {PACK} an earlier sitting wrote")
  if args.deadline is not None and args.deadline <= 0:
    _usage(f"--deadline {args.deadline}: give the seconds this sitting may take, > 0")
  out = os.path.abspath(args.out)
  if os.path.isdir(out) and os.listdir(out):
    _usage(f"{out} is not empty: give a new OUT folder (results of a sitting are never "
           "overwritten)")
  os.makedirs(out, exist_ok=True)
  work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="vma_table1_"))
  workdir = os.path.abspath(args.workdir or os.path.join(work, "train"))
  s = settings(args.dry_run, args.dtype, args.steps, args.eval_batch_size)
  sitting = Sitting(work, args.deadline)

  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(work, "jax_cache"))
  if args.dry_run:
    env["JAX_PLATFORMS"] = "cpu"
  if os.path.isdir(os.path.join(args.carry, "data", "vma_jax")):
    env["TFDS_DATA_DIR"] = os.path.join(args.carry, "data")
  # The commands import the package from this tree, installed or not (a bare GPU host).
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + env.get("PYTHONPATH", "").split(os.pathsep))
  if os.path.isdir(os.path.join(args.carry, "wheels")):
    sitting.python("install", ["benchmarks/gpu_check.py", "install", "--wheels",
                               os.path.join(args.carry, "wheels"), "--carry", args.carry,
                               "--target", os.path.join(work, "site"),
                               "--out", os.path.join(work, "install.json")], env=env)
    env["PYTHONPATH"] = os.path.join(work, "site") + os.pathsep + env["PYTHONPATH"]
  resumed_from = None
  if args.resume:
    start = time.monotonic()
    try:
      resumed_from = unpack(args.resume, workdir)
    except (ValueError, OSError, tarfile.TarError) as e:
      _usage(str(e))
    sitting.record(dict(name="unpack", command=f"unpack {args.resume} into {workdir}"),
                    "finished", 0, time.monotonic() - start, f"checkpoint of step {resumed_from}")

  reserve = s["pack_reserve_s"] + s["grace_s"]
  trained = sitting.python("train", ["train.py", "--config=configs/default.py",
                                     f"--workdir={workdir}", *s["train"]],
                           reserve_s=reserve, grace_s=s["grace_s"], env=env)
  evaluated = exported = None
  if trained["status"] == "finished":
    evaluated = sitting.python("evaluate", ["evaluate.py", f"--workdir={workdir}",
                                            *s["evaluate"]],
                               reserve_s=s["pack_reserve_s"] + 10, grace_s=10, env=env)
  complete = evaluated is not None and evaluated["status"] == "finished"
  eval_dir = os.path.join(workdir, "eval" if args.dtype == "float32" else f"eval_{args.dtype}")
  packed = None
  if complete:
    for name in ("results.md",) + FIGURES:
      shutil.copy(os.path.join(eval_dir, name), os.path.join(out, name))
    model_dir = os.path.join(work, "model")
    shutil.rmtree(model_dir, ignore_errors=True)
    exported = sitting.python("export", ["-m", "vma_jax.pretrained", f"--workdir={workdir}",
                                         f"--out={model_dir}", f"--results={eval_dir}"],
                              env=env)
    if exported["status"] == "finished":
      with tarfile.open(os.path.join(out, MODEL), "w") as tar:
        tar.add(model_dir, arcname="model")
  elif newest_step(workdir) is not None:  # first, so that the deadline never costs the pack
    start = time.monotonic()
    packed = pack(workdir, os.path.join(out, PACK))
    sitting.record(dict(name="pack", command=f"pack {workdir}"), "finished", 0,
                    time.monotonic() - start, f"step {packed['step']}, {packed['mb']} MB")
  if newest_step(workdir) is not None:
    sitting.python(
        "views", [os.path.join("benchmarks", "table1.py"), "views", workdir, out,
                  ",".join(map(str, s["memory_classes"])), str(s["per_class"])],
        reserve_s=5, grace_s=5, env=env)

  results = None
  if os.path.exists(os.path.join(eval_dir, "results.json")):
    with open(os.path.join(eval_dir, "results.json")) as f:
      results = json.load(f)
  failed = [p["name"] for p in sitting.phases if p["status"] == "failed"]
  status = ("complete" if complete and exported and exported["status"] == "finished"
            else "failed" if failed else "packed" if packed else "failed")
  report = dict(
      status=status, date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      mode="dry-run" if args.dry_run else "accelerator", dtype=args.dtype,
      deadline_s=args.deadline, elapsed_s=round(time.monotonic() - sitting.start, 1),
      workdir=workdir, resumed_from_step=resumed_from, step=newest_step(workdir),
      settings=s, phases=sitting.phases, results=results)
  report["files_mb"] = {**_sizes(out), REPORT: None}
  with open(os.path.join(out, REPORT), "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
  files = _sizes(out)
  too_big = [n for n, mb in files.items() if mb > MAX_FILE_MB]
  print(f"table1: {status} at step {report['step']} in {report['elapsed_s']:.0f} s; wrote "
        f"{len(files)} files to {out}" + (f"; over {MAX_FILE_MB} MB: {too_big}" if too_big
                                           else ""))
  if len(files) > MAX_FILES or too_big:
    return EXIT_FAILED
  return {"complete": EXIT_COMPLETE, "packed": EXIT_PACKED}.get(status, EXIT_FAILED)


def views(workdir: str, out: str, memory_classes: str, per_class: int) -> None:
  """samples.png (the labelled sample sheet), posterior.png (q(a|x,M) over a memory of
  several test classes) and training_curves.png, of workdir's newest checkpoint."""
  import jax  # pylint: disable=g-import-not-at-top
  from vma_jax import checkpoints, data, figures, model, sample, summaries  # pylint: disable=g-import-not-at-top

  records = summaries.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  figures.write_png(figures.training_curves(records), os.path.join(out, "training_curves.png"))
  params, step, config = checkpoints.restore_params(workdir)
  test = data.load_splits(config.data, splits=("test",))["test"]
  classes = [int(c) for c in memory_classes.split(",")]
  memory_TxHxW, labels_T, x_HxW = sample.memory_from_classes(test, classes, per_class)
  sheet = sample.draw(model.make_model(config), params, memory_TxHxW, x_HxW, num_generated=8,
                      key=jax.random.key(0))
  what = f"{per_class} images of each of test classes {memory_classes}"
  sample.write_sheet(sheet, os.path.join(out, "samples.png"), f"step {step}: memory of {what}")
  figures.write_png(
      figures.address_posterior(sheet.memory_TxHxW, sheet.dummies_DxHxW, sheet.x_HxW,
                                sheet.q_S, same_class_T=labels_T == labels_T[0],
                                title=f"q(a|x,M), step {step}: {what}"),
      os.path.join(out, "posterior.png"))


if __name__ == "__main__":
  if sys.argv[1:2] == ["views"]:
    views(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
  else:
    sys.exit(main())
