"""Figures of a run, drawn with matplotlib: the training curves, the bound and the address KL
against the memory size, the training grids of few-shot generations, the sampling command's
sheet, the address posterior over a memory, and the one-shot classifiers' mistakes.

Each function returns a matplotlib `Figure` (no pyplot state, no global backend), which
`write_png` saves atomically and `to_rgb` turns into an image array for TensorBoard.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vma_jax import files
from vma_jax import results as vma_results

if TYPE_CHECKING:
  from matplotlib import figure as mpl_figure

_PAPER = "paper (Bornschein et al. 2017)"
_REPRODUCTION = "PyTorch reproduction"
# Lines of Table 1 cells C:T by C, of large-memory cells R/T by R.
_COLOURS = {("C", 1): "tab:blue", ("C", 2): "tab:orange", ("R", 1): "tab:green",
            ("R", 5): "tab:red"}


def _new_figure(**kwargs) -> mpl_figure.Figure:
  """A matplotlib Figure (no pyplot). matplotlib is imported with the first figure: importing
  it takes a third of a second, which a process that draws nothing (training without image
  summaries, a command's usage error) need not pay."""
  from matplotlib import figure  # pylint: disable=g-import-not-at-top
  return figure.Figure(**kwargs)


def _agg_canvas(fig: mpl_figure.Figure):
  """Attaches matplotlib's Agg canvas to `fig` and returns it (whatever pyplot's backend)."""
  from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top
  return backend_agg.FigureCanvasAgg(fig)


def write_png(fig: mpl_figure.Figure, path: str, dpi: int = 100) -> None:
  """Saves `fig` as a PNG at `path` (atomically)."""
  _agg_canvas(fig)
  with files.atomic_write(path, "wb") as f:
    fig.savefig(f, format="png", dpi=dpi)


def png_bytes(fig: mpl_figure.Figure, dpi: int = 100) -> bytes:
  """The figure as PNG bytes (for `IPython.display.Image(data=...)`, whatever the backend)."""
  _agg_canvas(fig)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  return buffer.getvalue()


def to_rgb(fig: mpl_figure.Figure) -> np.ndarray:
  """The figure as a uint8 HxWx3 image (what a metric writer's `write_images` takes)."""
  canvas = _agg_canvas(fig)
  canvas.draw()
  return np.array(canvas.buffer_rgba())[..., :3]


def training_curves(records: Sequence[dict]) -> mpl_figure.Figure:
  """-L_K and KL(q(a|x,M) || p(a)) against the step, of training (means of the logged steps)
  and of validation, from a run's metrics.jsonl records (`summaries.read_metrics`). Records
  of one step are merged (training and validation are logged apart); a value logged twice
  (by a run killed after the step and resumed) counts once, by its last record."""
  last = {}
  for r in records:
    last.setdefault(r["step"], {}).update(r)
  fig = _new_figure(figsize=(11, 3.8))
  panels = (("neg_bound", "-L_K, nats per image (lower is better)"),
            ("address_kl", "KL(q(a|x,M) || p(a)), nats"))
  for i, (name, label) in enumerate(panels):
    ax = fig.add_subplot(1, 2, i + 1)
    for split, style in (("train", "-"), ("valid", "o-")):
      steps = sorted(s for s, r in last.items() if f"{split}/{name}" in r)
      if steps:
        ax.plot(steps, [float(last[s][f"{split}/{name}"]) for s in steps], style,
                markersize=4, label="training batches" if split == "train" else "validation")
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def _memory_axis(ax, memory_sizes) -> None:
  """A log axis of T with a tick at every memory size drawn (1, 2, 5, 19, ...)."""
  ax.set_xscale("log")
  ticks = sorted(set(memory_sizes))
  ax.set_xticks(ticks, [str(t) for t in ticks])
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlabel("T, images in memory")


def _series(results: Sequence[vma_results.CellResult]):
  """{("C", C) or ("R", R): the results of the cells C:T or R/T, by T}, memories of T > 0;
  and the results of empty memories (T = 0), drawn as horizontal lines."""
  grouped, empty = {}, []
  for r in sorted(results, key=lambda r: (r.same_class, r.max_classes, r.memory_size)):
    if r.memory_size == 0:
      empty.append(r)
    else:
      key = ("R", r.same_class) if r.same_class else ("C", r.max_classes)
      grouped.setdefault(key, []).append(r)
  return grouped, empty


def _series_label(key) -> str:
  kind, value = key
  return f"C={value}" if kind == "C" else f"R={value} of x's class among T"


def _empty_memory_lines(ax, empty, value) -> None:
  for r in empty:
    ax.axhline(value(r), color="grey", ls="-.", lw=1,
               label=f"this run, T=0 (dummies only), C={r.max_classes}")


def bound_vs_memory(results: Sequence[vma_results.CellResult]) -> mpl_figure.Figure:
  """-L_K per cell against T, one line per C with standard-error bars, and the paper's and
  the reproduction's Table 1 values of the same C as reference lines."""
  fig = _new_figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  grouped, empty = _series(results)
  for key, cells in grouped.items():
    colour = _COLOURS.get(key)
    t = [r.memory_size for r in cells]
    ax.errorbar(t, [r.bound for r in cells], yerr=[r.stderr for r in cells], marker="o",
                capsize=3, color=colour, label=f"this run, {_series_label(key)}")
    kind, c = key
    reference = sorted((tt, v) for (cc, tt), v in vma_results.REFERENCE.items()
                       if kind == "C" and cc == c)
    if reference:
      ref_t = [tt for tt, _ in reference]
      ax.plot(ref_t, [v[0] for _, v in reference], ls="--", color=colour, alpha=0.6,
              label=f"{_PAPER}, C={c}")
      ax.plot(ref_t, [v[1] for _, v in reference], ls=":", color=colour, alpha=0.8,
              label=f"{_REPRODUCTION}, C={c}")
  _empty_memory_lines(ax, empty, lambda r: r.bound)
  k = sorted({r.num_importance for r in results})
  drawn_t = [r.memory_size for cells in grouped.values() for r in cells]
  if any(kind == "C" for kind, _ in grouped):
    drawn_t += [t for _, t in vma_results.REFERENCE]
  _memory_axis(ax, drawn_t or [1])
  ax.set_ylabel(f"-L_K (K = {', '.join(map(str, k))}), nats per image")
  ax.set_title("Few-shot bound against memory size (lower is better)")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def kl_vs_memory(results: Sequence[vma_results.CellResult],
                 num_dummies: int) -> mpl_figure.Figure:
  """The mean KL(q(a|x,M) || p(a)) per cell against T, one line per C, beside log(T + D):
  the KL of a posterior certain of one slot, the most it can be."""
  fig = _new_figure(figsize=(6.4, 4.4))
  ax = fig.add_subplot()
  grouped, empty = _series(results)
  all_t = sorted({r.memory_size for cells in grouped.values() for r in cells}) or [1]
  grid_t = np.geomspace(min(all_t), max(all_t), 50) if len(all_t) > 1 else np.asarray(all_t)
  ax.plot(grid_t, np.log(grid_t + num_dummies), color="grey", ls="--",
          marker="_" if len(grid_t) == 1 else None, markersize=40,
          label=f"log(T + D), D = {num_dummies}: q certain of one slot")
  for key, cells in grouped.items():
    ax.plot([r.memory_size for r in cells], [r.address_kl for r in cells], marker="o",
            color=_COLOURS.get(key), label=f"this run, {_series_label(key)}")
  _empty_memory_lines(ax, empty, lambda r: r.address_kl)
  _memory_axis(ax, all_t)
  ax.set_ylabel("KL(q(a|x,M) || p(a)), nats")
  ax.set_title("How far the address posterior is from uniform")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def _image(ax, pixels_HxW, title: str | None = None, highlight: bool = False) -> None:
  """An image in [0, 1] with ink = 1, drawn dark on white in a thin grey frame (a thick red
  one if `highlight`)."""
  ax.imshow(1.0 - np.clip(pixels_HxW, 0.0, 1.0), cmap="gray", vmin=0.0, vmax=1.0,
            interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_edgecolor("tab:red" if highlight else "0.8")
    spine.set_linewidth(2.5 if highlight else 0.5)
  if title is not None:
    ax.set_title(title, fontsize=7)


def few_shot_grid(memory_BxTxHxW, x_BxHxW, retrieved_BxHxW,
                  samples_BxKxHxW) -> mpl_figure.Figure:
  """One row per episode: memory m_1..m_T | target x | the slot argmax_a q(a|x,M) (no such
  column where `retrieved_BxHxW` is None) | K samples generated given x, with the column
  groups labelled."""
  named = [("memory", memory_BxTxHxW), ("target", np.asarray(x_BxHxW)[:, None]),
           ("retrieved", None if retrieved_BxHxW is None else
            np.asarray(retrieved_BxHxW)[:, None]), ("samples", samples_BxKxHxW)]
  groups = [(label, np.asarray(v, np.float32)) for label, v in named if v is not None]
  batch = groups[0][1].shape[0]
  # Columns: each group's images, a gap between groups.
  widths, first_column = [], []
  for _, images_BxNxHxW in groups:
    widths += [0.4] if widths else []
    first_column.append(len(widths))
    widths += [1.0] * images_BxNxHxW.shape[1]
  fig = _new_figure(figsize=(0.6 * sum(widths) + 0.4, 0.6 * batch + 0.5))
  grid = fig.add_gridspec(batch, len(widths), width_ratios=widths, wspace=0.06, hspace=0.06,
                          left=0.02, right=0.98, bottom=0.02, top=1 - 0.35 / (0.6 * batch + 0.5))
  for b in range(batch):
    for start, (_, images_BxNxHxW) in zip(first_column, groups):
      for i, pixels in enumerate(images_BxNxHxW[b]):
        _image(fig.add_subplot(grid[b, start + i]), pixels)
  for (label, images_BxNxHxW), start in zip(groups, first_column):
    if not images_BxNxHxW.shape[1]:
      continue  # an empty memory
    left = grid[0, start].get_position(fig).x0
    right = grid[0, start + images_BxNxHxW.shape[1] - 1].get_position(fig).x1
    fig.text((left + right) / 2, grid[0, start].get_position(fig).y1 + 0.01, label,
             ha="center", va="bottom", fontsize=8)
  return fig


def sample_sheet(memory_TxHxW, dummies_DxHxW, q_S: np.ndarray | None, x_HxW,
                 posterior_NxHxW, prior_NxHxW, *, title: str) -> mpl_figure.Figure:
  """The sampling command's figure: the memory and the model's learned (dummy) slots, with
  q(a|x,M) under each slot and the retrieved slot framed (when there is a target and the
  model an address, `q_S`); the target and samples of p(x|z,...) for its posterior (for the
  VMA a ~ q(a|x,M), z ~ q(z|x,m_a)); samples generated from the memory alone (for the VMA
  a ~ p(a), z ~ p(z|m_a))."""
  memory_size, num_dummies = len(memory_TxHxW), len(dummies_DxHxW)
  num_samples = len(prior_NxHxW)
  columns = max(memory_size + num_dummies, num_samples + 1)
  rows = 3 if posterior_NxHxW is not None else 2
  fig = _new_figure(figsize=(0.9 * columns + 0.4, 1.25 * rows + 0.6))
  grid = fig.add_gridspec(rows, columns, hspace=0.6, wspace=0.15)
  retrieved = None if q_S is None else int(np.argmax(q_S))
  slots = [*memory_TxHxW, *dummies_DxHxW]
  for i, pixels in enumerate(slots):
    name = f"m{i + 1}" if i < memory_size else f"dummy {i - memory_size + 1}"
    label = name if q_S is None else f"{name}\nq={q_S[i]:.2f}"
    _image(fig.add_subplot(grid[0, i]), pixels, label, highlight=i == retrieved)
  row = 1
  if posterior_NxHxW is not None:
    _image(fig.add_subplot(grid[row, 0]), x_HxW, "target x")
    for n, pixels in enumerate(posterior_NxHxW):
      _image(fig.add_subplot(grid[row, n + 1]), pixels,
             "from q\ngiven x" if n == 0 else None)
    row += 1
  for n, pixels in enumerate(prior_NxHxW):
    _image(fig.add_subplot(grid[row, n + 1]), pixels,
           "generated\nfrom M" if n == 0 else None)
  fig.suptitle(title, fontsize=9)
  return fig



def address_posterior(memory_TxHxW, dummies_DxHxW, x_HxW, q_S: np.ndarray, *,
                      same_class_T: np.ndarray | None = None,
                      title: str = "") -> mpl_figure.Figure:
  """q(a|x,M) over the slots as bars, each slot's image under its bar (memory m_1..m_T, then
  the dummies), the target x on the left; bars of the slots of x's class (`same_class_T`)
  and of the dummies coloured apart, the retrieved slot argmax_a q framed."""
  memory_size, num_dummies = len(memory_TxHxW), len(dummies_DxHxW)
  slots = [*memory_TxHxW, *dummies_DxHxW]
  num_slots = len(slots)
  fig = _new_figure(figsize=(max(6.0, 0.55 * num_slots + 2.0), 3.6))
  grid = fig.add_gridspec(2, num_slots + 2, height_ratios=(3.2, 1.0),
                          width_ratios=[1.6, 0.3] + [1.0] * num_slots, hspace=0.08, wspace=0.1)
  _image(fig.add_subplot(grid[1, 0]), np.asarray(x_HxW, np.float32), "target x")
  ax = fig.add_subplot(grid[0, 2:])
  colours = ["tab:grey"] * num_slots
  for a in range(memory_size):
    colours[a] = ("tab:blue" if same_class_T is None or same_class_T[a] else "tab:orange")
  bars = ax.bar(np.arange(num_slots), q_S, width=0.8, color=colours)
  ax.set_xlim(-0.5, num_slots - 0.5)
  ax.set_ylim(0, 1)
  ax.set_xticks([])
  ax.set_ylabel("q(a | x, M)")
  ax.grid(True, axis="y", alpha=0.3)
  handles = [bars[a] for a in (next((a for a in range(memory_size) if colours[a] == c), None)
                               for c in ("tab:blue", "tab:orange")) if a is not None]
  labels = (["memory"] if same_class_T is None else
            [name for name, c in (("x's class", "tab:blue"), ("other classes", "tab:orange"))
             if c in colours[:memory_size]])
  if num_dummies:
    handles.append(bars[memory_size])
    labels.append("dummy slots")
  ax.legend(handles, labels, fontsize=8, loc="upper right")
  retrieved = int(np.argmax(q_S))
  for a, pixels in enumerate(slots):
    name = f"m{a + 1}" if a < memory_size else f"d{a - memory_size + 1}"
    _image(fig.add_subplot(grid[1, a + 2]), np.asarray(pixels, np.float32), name,
           highlight=a == retrieved)
  if title:
    fig.suptitle(title, fontsize=9)
  return fig


@dataclasses.dataclass(frozen=True)
class Mistake:
  """One one-shot trial classified wrong: the test image x, the training image of the class
  predicted and that of the correct class (ink = 1), with a label under each."""

  x_HxW: np.ndarray
  predicted_HxW: np.ndarray
  answer_HxW: np.ndarray
  labels: tuple[str, str, str]


@dataclasses.dataclass(frozen=True)
class MistakeGroup:
  """A classifier's mistakes: how many of its trials are wrong, and those drawn."""

  name: str
  num_wrong: int
  num_trials: int
  mistakes: Sequence[Mistake]


def one_shot_mistakes(groups: Sequence[MistakeGroup], *, title: str,
                      per_row: int = 4) -> mpl_figure.Figure:
  """The one-shot classifiers' mistakes, one section per classifier headed by its count of
  wrong trials and of those not drawn: per mistake, the test image x, the predicted training
  image (framed red) and the correct one, labelled."""
  # Rows: a header per group, then its mistakes, per_row triples to a row.
  rows = []
  for g in groups:
    rows.append(("header", g))
    rows += [("images", g.mistakes[i:i + per_row])
             for i in range(0, len(g.mistakes), per_row)]
  heights = [0.35 if kind == "header" else 1.0 for kind, _ in rows]
  widths = ([1.0, 1.0, 1.0, 0.35] * per_row)[:-1]
  fig = _new_figure(figsize=(0.95 * sum(widths) + 0.4, 1.15 * sum(heights) + 0.6))
  grid = fig.add_gridspec(len(rows), len(widths), height_ratios=heights, width_ratios=widths,
                          hspace=0.45, wspace=0.08, left=0.02, right=0.98, bottom=0.02,
                          top=1 - 0.5 / (1.15 * sum(heights) + 0.6))
  for r, (kind, content) in enumerate(rows):
    if kind == "header":
      ax = fig.add_subplot(grid[r, :])
      ax.axis("off")
      shown = len(content.mistakes)
      not_shown = content.num_wrong - shown
      ax.text(0.0, 0.2, f"{content.name}: {content.num_wrong} of {content.num_trials} wrong"
              + (f"; {shown} shown, {not_shown} not shown" if not_shown else "")
              + "   (test image x | predicted class | correct class)",
              fontsize=9, weight="bold", transform=ax.transAxes)
      continue
    for i, m in enumerate(content):
      for j, (pixels, label) in enumerate(zip((m.x_HxW, m.predicted_HxW, m.answer_HxW),
                                              m.labels)):
        _image(fig.add_subplot(grid[r, 4 * i + j]), np.asarray(pixels, np.float32), label,
               highlight=j == 1)
  fig.suptitle(title, fontsize=10)
  return fig
