"""What a training run writes: metric writers, the JSON-lines metrics log and image grids.

`create_writer` is CLU's default writer (TensorBoard summaries and log lines), or, where CLU or
the TensorFlow its summary writer needs is not installed (a bare accelerator host, a TPU
runtime without TensorFlow), a writer that only logs: the metrics log and the PNG grids below
need neither. `MetricsLog` appends one JSON object per logged step to `workdir/metrics.jsonl`
and never truncates it: a resumed run appends after the lines of the killed one, so a step
logged after the last checkpoint may appear twice (readers keep the last line of a step).
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Any, Callable, Mapping
import zlib

from absl import logging
import numpy as np

from vma_jax import files


class LoggingWriter:
  """The part of CLU's MetricWriter interface that training uses, as log lines only."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    del step, images  # the PNG grids in workdir/images/ hold them

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info("hparams: %s", dict(hparams))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


def create_writer(workdir: str, *, just_logging: bool = False):
  """CLU's default writer in `workdir`, or a `LoggingWriter` where CLU or TensorFlow is absent."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # CLU's summary writer imports TensorFlow
    logging.warning("No TensorBoard summaries (%s); metrics.jsonl and the PNG grids are "
                    "written as usual.", e)
    return LoggingWriter()
  return metric_writers.create_default_writer(workdir, just_logging=just_logging)


def progress_reporter(num_steps: int, writer) -> Callable[[int], Any]:
  """CLU's ReportProgress (steps/s and uptime to `writer`), or a no-op without CLU."""
  try:
    from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  except ImportError:
    return lambda step: None
  return periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)


class MetricsLog:
  """Appends {"step": s, name: value, ...} lines to a JSON-lines file."""

  def __init__(self, path: str):
    self.path = path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

  def write(self, step: int, scalars: dict) -> None:
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


def image_grid(images_RxCxHxW: np.ndarray, pad: int = 1, pad_value: float = 0.5) -> np.ndarray:
  """Tiles R rows of C images (values in [0, 1]) into one HxW image with `pad` pixel gaps."""
  rows, cols, height, width = images_RxCxHxW.shape
  grid = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad), pad_value,
                 np.float32)
  for r in range(rows):
    for c in range(cols):
      top, left = pad + r * (height + pad), pad + c * (width + pad)
      grid[top:top + height, left:left + width] = images_RxCxHxW[r, c]
  return grid


def few_shot_grid(memory_BxTxHxW, x_BxHxW, retrieved_BxHxW, samples_BxKxHxW) -> np.ndarray:
  """One row per episode: memory m_1..m_T | target x | argmax_a q(a|x,M) slot | K samples.

  Blank (mid-grey) columns separate the three groups. Ink is shown dark on white paper.
  """
  memory_BxTxHxW, x_BxHxW, retrieved_BxHxW, samples_BxKxHxW = (
      np.clip(np.asarray(v, np.float32), 0.0, 1.0)
      for v in (memory_BxTxHxW, x_BxHxW, retrieved_BxHxW, samples_BxKxHxW))
  gap_Bx1xHxW = np.full_like(x_BxHxW[:, None], np.nan)
  row_BxCxHxW = np.concatenate(
      [memory_BxTxHxW, gap_Bx1xHxW, x_BxHxW[:, None], retrieved_BxHxW[:, None], gap_Bx1xHxW,
       samples_BxKxHxW], axis=1)
  row_BxCxHxW = np.where(np.isnan(row_BxCxHxW), 0.5, 1.0 - row_BxCxHxW)  # ink = dark
  return image_grid(row_BxCxHxW)


def png_bytes(pixels_HxW: np.ndarray) -> bytes:
  """An 8-bit greyscale PNG of uint8 pixels (no image library needed)."""
  height, width = pixels_HxW.shape

  def chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

  # Each scanline starts with its filter type, 0 (none).
  rows = np.concatenate([np.zeros((height, 1), np.uint8), pixels_HxW.astype(np.uint8)], axis=1)
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit, greyscale
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b""))


def write_png(path: str, image_HxW: np.ndarray, scale: int = 2) -> None:
  """Writes a [0, 1] grey image as an 8-bit PNG, each pixel repeated `scale` times."""
  pixels = np.round(np.clip(image_HxW, 0.0, 1.0) * 255).astype(np.uint8)
  pixels = np.kron(pixels, np.ones((scale, scale), np.uint8))
  with files.atomic_write(path, "wb") as f:
    f.write(png_bytes(pixels))
