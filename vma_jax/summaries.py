"""What a training run writes besides TensorBoard: the JSON-lines metrics log and image grids.

`MetricsLog` appends one JSON object per logged step to `workdir/metrics.jsonl` and never
truncates it: a resumed run appends after the lines of the killed one, so a step logged
after the last checkpoint may appear twice (readers keep the last line of a step).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


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


def write_png(path: str, image_HxW: np.ndarray, scale: int = 2) -> None:
  """Writes a [0, 1] grey image as an 8-bit PNG, each pixel repeated `scale` times."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  pixels = np.round(np.clip(image_HxW, 0.0, 1.0) * 255).astype(np.uint8)
  pixels = np.kron(pixels, np.ones((scale, scale), np.uint8))
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  Image.fromarray(pixels, mode="L").save(tmp, format="PNG")
  os.replace(tmp, path)
