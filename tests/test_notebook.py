"""The Colab notebook: a well-formed notebook without outputs, whose code runs end to end.

Its code cells run in order as one script on this machine's CPU, with the parameters cell's
values overridden (as papermill would) for a 2-step run and a tiny evaluation.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "notebooks" / "colab_tpu.ipynb"


def _cells():
  notebook = json.loads(NOTEBOOK.read_text())
  assert notebook["nbformat"] == 4
  return notebook["cells"]


def test_notebook_is_well_formed_and_has_no_outputs():
  cells = _cells()
  code = [c for c in cells if c["cell_type"] == "code"]
  assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)
  tagged = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
  assert len(tagged) == 1
  for cell in code:  # plain Python: it runs outside IPython too
    assert not any(line.lstrip().startswith(("!", "%")) for line in cell["source"])


@pytest.mark.slow
def test_notebook_runs_end_to_end(tmp_path, archive_dir, omniglot_data_dir, omniglot_test):
  workdir = tmp_path / "run"
  overrides = (f"WORKDIR = {str(workdir)!r}\nNUM_STEPS = 2\nARCHIVE_DIR = {archive_dir!r}\n"
               f"DATA_DIR = {omniglot_data_dir!r}\nNUM_TARGETS = 4\nNUM_IMPORTANCE = 4\n"
               "INSTALL = False\n")
  parts = []
  for cell in _cells():
    if cell["cell_type"] == "code":
      parts.append("".join(cell["source"]))
      if "parameters" in cell["metadata"].get("tags", []):
        parts.append(overrides)
  script = tmp_path / "notebook.py"
  script.write_text("\n\n".join(parts) + "\n")
  result = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, MPLBACKEND="Agg"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "trained to step 2" in result.stdout
  assert "| 1:5 |" in result.stdout  # the results table of cell C=1, T=5
  saved = json.loads((workdir / "eval" / "results.json").read_text())
  assert [(r["max_classes"], r["memory_size"], r["num_targets"], r["num_importance"])
          for r in saved["results"]] == [(1, 5, 4, 4)]
  assert list((workdir / "images").glob("*.png"))
  for name in ("bound_vs_T.png", "kl_vs_T.png"):  # the figures the notebook shows
    assert (workdir / "eval" / name).exists()
