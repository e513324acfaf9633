"""Results of an evaluation: the Table 1 reference numbers, results files, resumable grids.

`write_results` writes results.json, results.csv and results.md into an output folder, never
over earlier ones (those are kept as results.<n>.*). `FinishedCells` records each cell of a
grid as it finishes, so that an interrupted evaluation, run again, does only the cells left.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
from typing import Iterable, Sequence

from absl import logging

from vma_jax import cells as vma_cells
from vma_jax import files

# ELBO@1000 in nats on the test split (docs/model.md, Table 1): {(C, T): (paper, reproduction)}.
REFERENCE = {
    (1, 1): (86.5, 85.2), (1, 2): (83.0, 79.8), (1, 3): (79.6, 77.5), (1, 4): (79.0, 76.2),
    (1, 5): (76.5, 75.3), (1, 10): (76.2, 73.2), (1, 19): (73.9, 71.8),
    (2, 1): (87.5, 85.2), (2, 2): (83.3, 82.7), (2, 3): (80.9, 80.1), (2, 4): (79.3, 78.5),
    (2, 5): (79.1, 77.5), (2, 10): (77.0, 75.2), (2, 19): (75.0, 73.5),
}
# The cells of Table 1, as `cells.parse_cells` reads them.
GRID = ",".join(f"{c}:{t}" for c, t in REFERENCE)
# Large memories: R = 1 and R = 5 images of the target's class among T up to 1000.
LARGE_GRID = ",".join(f"{r}/{t}" for r in (1, 5) for t in (19, 50, 100, 200, 500, 1000))
# The grids `evaluate.py --cells` knows by name.
GRIDS = {"table1": GRID, "large": LARGE_GRID}
# Written by an evaluation; the figures by `vma_jax.evaluate` (`vma_jax.figures`).
FIGURE_FILES = ("bound_vs_T.png", "kl_vs_T.png")
RESULT_FILES = ("results.json", "results.csv", "results.md", *FIGURE_FILES)
# The means over a cell's targets of `objective.address_summary`.
ADDRESS_FIELDS = ("address_kl", "address_entropy", "mass_target_class", "mass_dummy")


@dataclasses.dataclass(frozen=True)
class CellResult:
  """-L_K on one cell: mean over targets, its standard error, K and the number of targets;
  and the address posterior's means over the targets (NaN where not measured). A cell R/T
  has max_classes = 0 and same_class = R; a Table 1 cell C:T same_class = 0."""

  max_classes: int
  memory_size: int
  bound: float
  stderr: float
  num_importance: int
  num_targets: int
  seconds: float
  address_kl: float = math.nan  # KL(q(a|x,M) || p(a)), nats
  address_entropy: float = math.nan  # H[q(a|x,M)], nats
  mass_target_class: float = math.nan  # q(a|x,M) on the memory slots of x's class
  mass_dummy: float = math.nan  # q(a|x,M) on the dummy slots
  same_class: int = 0  # R of a cell R/T

  @property
  def cell(self) -> vma_cells.Cell:
    return vma_cells.Cell(self.max_classes, self.memory_size, self.same_class)


def reference(cell: vma_cells.Cell) -> tuple[float | None, float | None]:
  """The (paper, reproduction) Table 1 values of a cell; (None, None) outside Table 1."""
  if cell.same_class:
    return None, None
  return REFERENCE.get((cell.max_classes, cell.memory_size), (None, None))


def results_markdown(results: Iterable[CellResult]) -> str:
  """A Markdown table of the results beside the paper's and the reproduction's numbers."""
  lines = ["| cell | ours | ± | paper | reproduction | K | targets | KL(q(a)‖p(a)) | "
           "q on x's class | q on dummies |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    paper, repro = reference(r.cell)
    fmt = lambda v: "–" if v is None else f"{v:.1f}"
    lines.append(f"| {r.cell} | {r.bound:.2f} | {r.stderr:.2f} | "
                 f"{fmt(paper)} | {fmt(repro)} | {r.num_importance} | {r.num_targets} | "
                 f"{r.address_kl:.2f} | {r.mass_target_class:.2f} | {r.mass_dummy:.2f} |")
  return "\n".join(lines) + "\n"


def write_results(results: Sequence[CellResult], out_dir: str, meta: dict) -> dict[str, str]:
  """Writes results.json, results.csv and results.md under out_dir (atomically each).

  Earlier results in out_dir are never overwritten: they are kept as results.<n>.{json,csv,md}
  (n = 1, 2, ...), with their figures as bound_vs_T.<n>.png and kl_vs_T.<n>.png, so the
  latest evaluation is always results.*.
  """
  rows = [dataclasses.asdict(r) for r in results]
  for row, result in zip(rows, results):
    row["cell"] = str(result.cell)
    row["paper"], row["reproduction"] = reference(result.cell)
  csv_text = io.StringIO()
  writer = csv.DictWriter(csv_text, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  header = (f"ELBO@{results[0].num_importance} (nats, lower is better) on the Omniglot test "
            f"split; checkpoint step {meta.get('step')}.\n\n")
  texts = {"json": json.dumps({"meta": meta, "results": rows}, indent=2),
           "csv": csv_text.getvalue(), "md": header + results_markdown(results)}
  paths = write_files(out_dir, {f"results.{kind}": text for kind, text in texts.items()},
                      RESULT_FILES)
  return {kind: paths[f"results.{kind}"] for kind in texts}


def write_files(out_dir: str, texts: dict[str, str], kept: Sequence[str]) -> dict[str, str]:
  """Writes each texts[name] as out_dir/name (atomically each), after moving the earlier
  files `kept` of out_dir aside as <stem>.<n>.<ext> (`files.keep_previous`), so that they
  are never overwritten. Returns {name: path}."""
  n = files.keep_previous(out_dir, kept)
  if n is not None:
    logging.info("Earlier results kept as %s (and the others of %s as <name>.%d.*)",
                 os.path.join(out_dir, f"results.{n}.json"), ", ".join(kept), n)
  paths = {}
  for name, text in texts.items():
    paths[name] = os.path.join(out_dir, name)
    files.write_text(paths[name], text)
  return paths


class FinishedCells:
  """The cells an evaluation has finished, in out_dir/partial-<id>.json until it completes.

  <id> is a digest of what the bounds depend on (`identity`: the parameters, dtype, seed, K,
  number of targets; not the batch or chunk sizes, nor the devices), so a rerun of an
  interrupted evaluation takes up its cells, and other settings never read them.
  """

  def __init__(self, out_dir: str, identity: dict):
    self.identity = identity
    name = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    self.path = os.path.join(out_dir, f"partial-{name}.json")
    self.cells: dict[vma_cells.Cell, CellResult] = {}
    if os.path.exists(self.path):
      try:
        with open(self.path) as f:
          saved = json.load(f)
        if saved["identity"] == identity:
          self.cells = {result.cell: result for result in
                        (CellResult(**r) for r in saved["results"])}
      except (ValueError, KeyError, TypeError) as e:
        logging.warning("Ignoring %s, which cannot be read (%s): its cells are evaluated "
                        "again, and it is replaced when the first one finishes", self.path, e)

  def add(self, result: CellResult) -> None:
    """Records a finished cell (atomically: a kill leaves the previous file whole)."""
    self.cells[result.cell] = result
    files.write_json(self.path, {
        "identity": self.identity,
        "results": [dataclasses.asdict(r) for r in self.cells.values()]})

  def remove_if_within(self, results: Sequence[CellResult]) -> None:
    """Removes the file once `results` hold every cell it has (else it stays, for later)."""
    written = {r.cell for r in results}
    if os.path.exists(self.path) and set(self.cells) <= written:
      os.remove(self.path)
