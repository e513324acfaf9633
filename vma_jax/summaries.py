"""What a run writes besides checkpoints: TensorBoard summaries, the JSON-lines metrics log,
its log lines and its progress bar.

`create_writer` is CLU's TensorBoard summary writer; the log lines are the run's own, so CLU's
logging writer, which would repeat every scalar as a line of its own, is left out. CLU's writers
import TensorFlow (seconds at every start, and a large install), so they are made only where event
files are asked for (`config.train.tensorboard`); without them, or where CLU or TensorFlow is
not installed, a run writes `metrics.jsonl`, its images as PNG files and its log lines, and
never imports TensorFlow. `MetricsLog` appends one JSON object per logged step to
`workdir/metrics.jsonl` and never truncates it: a resumed run appends after the lines of the
killed one, so a step logged after the last checkpoint may appear twice (readers keep the last
line of a step).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from absl import logging
import numpy as np


def create_writer(logdir: str, *, tensorboard: bool = True, just_logging: bool = False):
  """CLU's asynchronous TensorBoard writer into `logdir`, or None: without `tensorboard`, for
  `just_logging` processes (not the first of several), or where CLU or TensorFlow is not
  installed."""
  if not tensorboard or just_logging:
    return None
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # CLU's summary writer imports TensorFlow
    logging.warning("No TensorBoard summaries (%s); metrics.jsonl and the PNG images are "
                    "written as usual.", e)
    return None
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(logdir)])


def progress_bar(num_steps: int, done: int, *, disable: bool | None = None):
  """A tqdm progress bar over steps, starting at `done`. Made after the first step of a run,
  its rate and time left leave out the first step's compilation. `disable=None`: shown on
  a terminal or in a notebook, not in a log file."""
  from tqdm import auto as tqdm_auto  # pylint: disable=g-import-not-at-top

  return tqdm_auto.tqdm(total=num_steps, initial=done, unit="step", disable=disable,
                        dynamic_ncols=True, smoothing=0.1)


def log_train_means(values: list[dict], step: int, num_steps: int, seconds: float,
                    steps: int) -> dict[str, float]:
  """Logs one line about the means of `values` (the metrics of the steps since the last
  line, on the host), and returns them as "train/..." scalars with the rate in steps/s."""
  means = {n: np.mean([v[n] for v in values]) for n in values[0]}
  scalars = {f"train/{n}": float(v) for n, v in means.items()}
  scalars["train/steps_per_sec"] = steps / max(seconds, 1e-9)
  # The address's figures only for a read that has one (objective.step_metrics).
  address = "".join(f", {label} {means[n]:.{digits}f}" for n, label, digits in (
      ("address_kl", "KL(q(a)||p(a))", 3), ("frac_same_class", "same-class", 2),
      ("frac_dummy", "dummy", 2)) if n in means)
  logging.info("step %d/%d: loss %.2f, -L_K %.2f nats%s, %.2f steps/s", step, num_steps,
               means["loss"], means["neg_bound"], address, scalars["train/steps_per_sec"])
  return scalars


class MetricsLog:
  """Appends {"step": s, name: value, ...} lines to a JSON-lines file."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    record = {"step": int(step)}
    for name, value in scalars.items():
      value = float(value)
      # JSON has no NaN or infinity: write them as strings a reader can still parse.
      record[name] = value if math.isfinite(value) else str(value)
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl, in file order (a torn last line is skipped)."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records
