"""Kills training and evaluation with SIGKILL at random moments and checks that resuming loses
nothing: the final parameters equal an uninterrupted run's bit for bit, the final results an
uninterrupted evaluation's.

    python benchmarks/kill_campaign.py --kills=20 --eval_kills=10 --out=kill_campaign.json

Training: `train.py --config=configs/quick.py` shrunk to --num_steps steps of 8 episodes, a
checkpoint every 10 steps. An uninterrupted run trains once; then the same command runs in
another workdir and is killed --kills times, each time started again, then left to finish.
Each kill is, in turn, at a random moment of the steps (after the run has logged a step of
its own, a uniform delay of up to --max_delay seconds) or during a checkpoint write (once
Orbax's temporary folder of a save has appeared, a uniform delay of up to 0.1 s).
Evaluation: `evaluate.py` on the finished run's workdir, 4 cells, once uninterrupted and once
killed --eval_kills times at uniform moments of the uninterrupted evaluation's duration
(measured once the compilation cache is warm, as it is for the killed runs).

Writes a JSON report (every kill: when, the checkpoints there were, whether a save was in
flight, the step the next run resumed from) and exits with status 1 if any comparison fails.
Needs the Omniglot archives (VMA_OMNIGLOT_DIR); about 15 s per kill on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# pylint: disable=g-import-not-at-top
from vma_jax import checkpoints

TRAIN_OVERRIDES = ("--config.train.checkpoint_every=10", "--config.train.log_every=1",
                   "--config.train.batch_size=8", "--config.train.max_checkpoints=3",
                   "--config.train.validate_every=0", "--config.train.image_every=0",
                   "--config.train.tensorboard=False")
EVAL_FLAGS = ("--cells=1:1,1:2,1:5,2:5", "--num_targets=16", "--num_importance=20",
              "--batch_size=4", "--chunk_size=10")


def _env(cache_dir: str) -> dict[str, str]:
  # Compiled programs are cached on disk, so that every restart does not compile again.
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1")


def train_command(workdir: str, num_steps: int) -> list[str]:
  return [sys.executable, os.path.join(_ROOT, "train.py"), "--config=configs/quick.py",
          f"--workdir={workdir}", f"--config.train.num_steps={num_steps}", *TRAIN_OVERRIDES]


def eval_command(workdir: str) -> list[str]:
  return [sys.executable, os.path.join(_ROOT, "evaluate.py"), f"--workdir={workdir}",
          *EVAL_FLAGS]


def _logged_steps(workdir: str) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      return sum(1 for _ in f)
  except OSError:
    return 0


def _temporary_folders(workdir: str) -> set[tuple[str, int]]:
  """(name, inode) of the temporary folders of checkpoint saves in workdir."""
  directory = checkpoints.checkpoint_dir(workdir)
  found = set()
  if os.path.isdir(directory):
    for entry in os.scandir(directory):
      if "orbax-checkpoint-tmp" in entry.name:
        try:
          found.add((entry.name, entry.inode()))
        except OSError:  # removed meanwhile
          pass
  return found


def _run_to_end(command, env, log_path) -> float:
  start = time.monotonic()
  with open(log_path, "a") as log:
    subprocess.run(command, env=env, cwd=_ROOT, stdout=log, stderr=log, check=True)
  return time.monotonic() - start


def _resumed_from(log_text: str) -> int | None:
  found = re.findall(r"Resumed from step (\d+)", log_text)
  return int(found[-1]) if found else None


def train_campaign(base: str, *, num_steps: int, kills: int, max_delay: float,
                   rng: random.Random, env: dict, log) -> dict:
  """Trains once straight, once killed `kills` times; returns the report."""
  straight, killed = os.path.join(base, "straight"), os.path.join(base, "killed")
  seconds = _run_to_end(train_command(straight, num_steps), env, os.path.join(base, "straight.log"))
  log(f"uninterrupted run: {num_steps} steps in {seconds:.0f} s")
  events, attempts = [], 0
  while len(events) < kills:
    attempts += 1
    mode = "save" if len(events) % 2 else "step"
    run_log = os.path.join(base, f"killed.{attempts}.log")
    before = _logged_steps(killed)
    # Left by a save that an earlier kill cut short (until this run's manager removes them).
    stale = _temporary_folders(killed)
    saving = lambda: bool(_temporary_folders(killed) - stale)
    with open(run_log, "w") as out:
      process = subprocess.Popen(train_command(killed, num_steps), env=env, cwd=_ROOT,
                                 stdout=out, stderr=out)
      start = time.monotonic()
      if mode == "step":
        while process.poll() is None and _logged_steps(killed) <= before:
          time.sleep(0.01)
        time.sleep(rng.uniform(0.0, max_delay))
      else:  # a random moment of a checkpoint's write
        while process.poll() is None and not saving():
          time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.1))
      in_flight = saving()
      finished_steps = checkpoints.saved_steps(killed)
      if process.poll() is not None:
        raise RuntimeError(f"the run ended before it was killed (see {run_log}): give it "
                           "more --num_steps")
      process.send_signal(signal.SIGKILL)
      process.wait()
    with open(run_log) as f:
      resumed = _resumed_from(f.read())
    events.append(dict(mode=mode, after_s=round(time.monotonic() - start, 2),
                       resumed_from=resumed, checkpoints=finished_steps,
                       save_in_flight=in_flight))
    log(f"kill {len(events)}/{kills} ({mode}): {events[-1]['after_s']} s after start, "
        f"checkpoints {finished_steps}, save in flight: {in_flight}, this run resumed from "
        f"{resumed}")
  _run_to_end(train_command(killed, num_steps), env, os.path.join(base, "killed.final.log"))
  digests = {name: checkpoints.tree_digest(checkpoints.restore_params(path)[0])
             for name, path in (("straight", straight), ("killed", killed))}
  equal = digests["straight"] == digests["killed"]
  log(f"final parameters {'equal bit for bit' if equal else 'DIFFER'} "
      f"(sha256 {digests['killed'][:16]}...)")
  return dict(num_steps=num_steps, kills=events, params_sha256=digests, equal=equal,
              during_save=sum(e["save_in_flight"] for e in events))


def _results(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    rows = json.load(f)["results"]
  return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def eval_campaign(base: str, trained: str, *, kills: int, rng: random.Random, env: dict,
                  log) -> dict:
  """Evaluates a copy of `trained` straight, another killed `kills` times; the report."""
  straight, killed = os.path.join(base, "eval_straight"), os.path.join(base, "eval_killed")
  for path in (straight, killed):
    shutil.copytree(trained, path)
  # The first evaluation fills the compilation cache; the kill moments are drawn over the
  # second's duration, as long as each killed run would take.
  _run_to_end(eval_command(straight), env, os.path.join(base, "eval_straight.log"))
  duration = _run_to_end(eval_command(straight), env, os.path.join(base, "eval_straight.log"))
  log(f"uninterrupted evaluation: {duration:.0f} s")
  events = []
  for n in range(kills):
    delay = rng.uniform(0.0, duration)
    with open(os.path.join(base, f"eval_killed.{n + 1}.log"), "w") as out:
      process = subprocess.Popen(eval_command(killed), env=env, cwd=_ROOT, stdout=out,
                                 stderr=out)
      try:
        process.wait(timeout=delay)
        finished = True
      except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        finished = False
    partial = [p for p in os.listdir(os.path.join(killed, "eval")) if p.startswith("partial")
               ] if os.path.isdir(os.path.join(killed, "eval")) else []
    cells_done = 0
    for name in partial:
      with open(os.path.join(killed, "eval", name)) as f:
        cells_done = len(json.load(f).get("results", []))
    events.append(dict(after_s=round(delay, 2), finished=finished, cells_done=cells_done))
    log(f"evaluation kill {n + 1}/{kills}: at {delay:.1f} s"
        f"{' (it had finished)' if finished else ''}, {cells_done} cell(s) recorded")
  _run_to_end(eval_command(killed), env, os.path.join(base, "eval_killed.final.log"))
  equal = _results(straight) == _results(killed)
  log(f"final results {'equal' if equal else 'DIFFER'}")
  return dict(duration_s=round(duration, 1), kills=events, equal=equal)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of training")
  parser.add_argument("--eval_kills", type=int, default=10, help="SIGKILLs of evaluation")
  parser.add_argument("--num_steps", type=int, default=200, help="steps of the training run")
  parser.add_argument("--max_delay", type=float, default=6.0,
                      help="the longest wait (s) after a run's first step before a kill")
  parser.add_argument("--seed", type=int, default=0, help="fixes the kill moments")
  parser.add_argument("--dir", default=None, help="where the runs go (default: a temp dir)")
  parser.add_argument("--out", default=None, help="the JSON report")
  args = parser.parse_args()
  if args.kills < 0 or args.eval_kills < 0 or args.num_steps < 2:
    parser.error("--kills and --eval_kills must be >= 0 and --num_steps >= 2")
  base = args.dir or tempfile.mkdtemp(prefix="kill_campaign_")
  if os.path.exists(os.path.join(base, "straight")):
    parser.error(f"--dir={base} holds an earlier campaign; give an empty or new folder")
  os.makedirs(base, exist_ok=True)
  rng = random.Random(args.seed)
  env = _env(os.path.join(base, "compilation_cache"))
  log = lambda line: print(line, flush=True)
  start = time.monotonic()
  report = dict(command=" ".join(sys.argv), dir=base)
  report["train"] = train_campaign(base, num_steps=args.num_steps, kills=args.kills,
                                   max_delay=args.max_delay, rng=rng, env=env, log=log)
  report["eval"] = eval_campaign(base, os.path.join(base, "straight"), kills=args.eval_kills,
                                 rng=rng, env=env, log=log)
  report["seconds"] = round(time.monotonic() - start)
  ok = report["train"]["equal"] and report["eval"]["equal"]
  print(f"training: {args.kills} kills ({report['train']['during_save']} during a save), final "
        f"parameters {'bit-identical' if report['train']['equal'] else 'DIFFERENT'}; "
        f"evaluation: {args.eval_kills} kills, final results "
        f"{'identical' if report['eval']['equal'] else 'DIFFERENT'}; {report['seconds']} s")
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
