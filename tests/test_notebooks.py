"""The notebooks: committed without outputs, each with one tagged parameters cell, and run
headless in a real Jupyter kernel (papermill, on nbclient) on tiny settings: reproduce.ipynb
trains configs/quick.py at tiny sizes for 2 steps and evaluates two Table 1 cells, then
explore.ipynb explores the workdir it trained. Their outputs (the tables and figures) are
checked."""

import base64
import json
import os
import pathlib

import pytest

import helpers
from vma_jax import cells as vma_cells
from vma_jax import one_shot
from vma_jax import results as vma_results

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
RUNS_ZIP = os.path.join(os.environ.get("VMA_ONE_SHOT_DIR") or str(
    REPO_ROOT.parent / "shared" / "data" / "omniglot_one_shot"), one_shot.RUNS_FILE)
# Two cells of Table 1 (a compile each): the smallest and the largest memory.
CELLS = ("1:1", "2:19")
# configs/quick.py at tiny sizes, as a module of configs/ that the kernel finds on its path
# (configs/ is a namespace package): the notebooks' every path, in seconds per compile.
TINY_CONFIG = """from configs import quick


def get_config():
  config = quick.get_config()
  config.model.update(latent_dim=8, embed_dim=16, match_dim=16)
  config.train.batch_size = 4
  # No event files (the notebooks read metrics.jsonl): the kernel never imports TensorFlow.
  config.train.tensorboard = False
  # Validation runs at the last step: 4 targets, not 256.
  config.validation.update(num_targets=4, num_importance=2, batch_size=4, chunk_size=2)
  # The estimate's timed batches, the cells and the growth cells: 2 targets at once, not 16.
  config.eval.update(batch_size=2, chunk_size=2)
  return config
"""


def _code_cells(name):
  notebook = json.loads((NOTEBOOK_DIR / name).read_text())
  assert notebook["nbformat"] == 4
  return [c for c in notebook["cells"] if c["cell_type"] == "code"]


def test_there_are_the_two_notebooks():
  assert NOTEBOOKS == ["explore.ipynb", "reproduce.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_reads_every_parameter(name):
  import papermill  # pylint: disable=g-import-not-at-top

  (cell,) = [c for c in _code_cells(name) if "parameters" in c["metadata"].get("tags", [])]
  assigned = [line.split("=")[0].strip() for line in "".join(cell["source"]).splitlines()
              if line and not line.startswith("#")]
  assert list(papermill.inspect_notebook(str(NOTEBOOK_DIR / name))) == assigned


def test_reproduce_defaults_are_the_study():
  """The defaults train the recipe and evaluate the 14 Table 1 cells at K = 1000 on every
  test image (the tests run other values)."""
  (cell,) = [c for c in _code_cells("reproduce.ipynb")
             if "parameters" in c["metadata"].get("tags", [])]
  values = {}
  exec("".join(cell["source"]), {}, values)  # pylint: disable=exec-used
  assert (values["CONFIG"], values["NUM_STEPS"], values["CELLS"]) == ("default", 0, "table1")
  assert (values["NUM_IMPORTANCE"], values["NUM_TARGETS"]) == (1000, 0)
  assert len(vma_cells.parse_cells(vma_results.GRIDS["table1"])) == 14
  assert values["WORKDIR"].startswith("/content/drive/")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_no_outputs_and_one_parameters_cell(name):
  code = _code_cells(name)
  assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
  tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
  assert len(tagged) == 1
  assert code.index(tagged[0]) == 0  # set before the set-up cell reads them
  for cell in code:  # plain Python: no shell escapes or magics
    assert not any(line.lstrip().startswith(("!", "%")) for line in cell["source"])


def _outputs(notebook):
  """(the text of its stream and markdown outputs, its PNG images as bytes)."""
  texts, images = [], []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream":
        texts.append(output.text)
      elif output.output_type in ("display_data", "execute_result"):
        data = output.data
        if "image/png" in data:
          images.append(base64.b64decode(data["image/png"]))
        texts.append(data.get("text/markdown", ""))
  return "\n".join(texts), images


def _execute(name, tmp_path, parameters):
  import papermill  # pylint: disable=g-import-not-at-top

  # From notebooks/, as a user opening it there; the kernel inherits this environment.
  executed = papermill.execute_notebook(
      str(NOTEBOOK_DIR / name), str(tmp_path / name), parameters=parameters,
      cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False,
      execution_timeout=600)
  return _outputs(executed)


def _is_png(image):
  return image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 2000


@pytest.mark.slow
def test_reproduce_then_explore(tmp_path, archive_dir, omniglot_data_dir, omniglot_test,
                                monkeypatch):
  """Both notebooks in a real kernel, on a tiny model: the estimate, training, two cells, the
  figures, then the sample sheet, the one-shot classifiers (2 of the 20 runs) and the bound
  against T. About 45 s on 2 cores: each notebook's programs are compiled anew in its
  kernel."""
  if not os.path.isfile(RUNS_ZIP):
    pytest.skip(f"Lake's one-shot runs not found at {RUNS_ZIP}")
  monkeypatch.delenv("MPLBACKEND", raising=False)
  extra = tmp_path / "extra"
  (extra / "configs").mkdir(parents=True)
  (extra / "configs" / "tiny_notebook.py").write_text(TINY_CONFIG)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(extra)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  workdir, cache = str(tmp_path / "run"), helpers.CACHE_DIR
  text, images = _execute("reproduce.ipynb", tmp_path, dict(
      WORKDIR=workdir, CONFIG="tiny_notebook", NUM_STEPS=2, ARCHIVE_DIR=archive_dir,
      DATA_DIR=omniglot_data_dir, TIMING_STEPS=1, CELLS=",".join(CELLS), NUM_TARGETS=2,
      NUM_IMPORTANCE=2, COMPILE_CACHE=cache, INSTALL=False))
  # The time estimate: the training phase, one row per cell, the total.
  assert "| training, steps 0-2 |" in text and "| **all** |" in text
  assert all(f"| evaluation, cell {cell} |" in text for cell in CELLS)
  assert "trained to step 2" in text
  # The Table 1 results, beside the paper's numbers.
  rows = [line.split(" | ") for line in text.splitlines()
          if line.startswith("| ") and " | 2 | " in line]
  assert [row[0][2:] for row in rows] == list(CELLS)
  for row, cell in zip(rows, vma_cells.parse_cells(",".join(CELLS))):
    assert row[3:5] == [f"{v:.1f}" for v in vma_results.reference(cell)]
  saved = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
  assert [r["cell"] for r in saved["results"]] == list(CELLS)
  # Figures: the curves, the few-shot grid, the bound and the KL against T.
  assert len(images) == 4 and all(_is_png(i) for i in images)

  out_dir = tmp_path / "explore"
  text, images = _execute("explore.ipynb", tmp_path, dict(
      WORKDIR=workdir, OUT_DIR=str(out_dir), MEMORY_CLASSES="7,21", PER_CLASS=2,
      NUM_GENERATED=2, ONE_SHOT_RUNS=RUNS_ZIP, CLASSIFY_K=2, ONE_SHOT_NUM_RUNS=2,
      GROWTH_CELLS="1/1,1/50",
      GROWTH_TARGETS=2, GROWTH_K=2, COMPILE_CACHE=cache, INSTALL=False))
  assert f"{workdir}, step 2" in text
  assert "retrieved: " in text and "q on x's class: " in text
  assert "the first 2 of Lake et al.'s 20 runs (40 trials)" in text
  for name in ("address", "bound", "combined", "pixel"):  # the one-shot classifiers' rows
    assert f"| {name} (" in text
  assert all(f"| {cell} |" in text for cell in ("1/1", "1/50"))
  # The sheet, the address posterior, the one-shot mistakes, the bound and KL against T.
  assert len(images) == 5 and all(_is_png(i) for i in images)
  assert sorted(p.name for p in out_dir.glob("*.png")) == [
      "address_posterior.png", "growth_bound_vs_T.png", "growth_kl_vs_T.png", "sheet.png"]
  assert (out_dir / "classify" / "results.json").exists()
  assert not (tmp_path / "run" / "classify").exists()  # nothing written to the workdir
