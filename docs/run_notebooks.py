"""Runs both notebooks headless on this machine and keeps their figures for docs/notebooks.md.

    python docs/run_notebooks.py --out /tmp/notebooks   # about 30 minutes on a 2-core CPU

reproduce.ipynb trains configs/quick.py (300 steps) into OUT/run and evaluates the 14 Table 1
cells at K = 1000 on 64 targets each; explore.ipynb then explores that workdir (one-shot
bounds at K = 10: at K = 100 they take about 25 minutes here). The executed
notebooks go to OUT, their PNG outputs to docs/figures/notebooks/<notebook>_<n>.png, and
their Markdown and printed outputs to OUT/<notebook>.txt.
"""

import argparse
import base64
import os
import pathlib

import papermill

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FIGURES = REPO_ROOT / "docs" / "figures" / "notebooks"


def run(name: str, out: pathlib.Path, parameters: dict) -> None:
  executed = papermill.execute_notebook(
      str(REPO_ROOT / "notebooks" / name), str(out / name), parameters=parameters,
      cwd=str(REPO_ROOT / "notebooks"), kernel_name="python3", log_output=True)
  stem, texts, count = name.removesuffix(".ipynb"), [], 0
  for cell in executed.cells:
    for output in cell.get("outputs", []):
      if output.output_type == "stream":
        texts.append(output.text)
      elif "data" in output:
        if "image/png" in output.data:
          count += 1
          (FIGURES / f"{stem}_{count}.png").write_bytes(base64.b64decode(output.data["image/png"]))
        texts.append(output.data.get("text/markdown", ""))
  (out / f"{stem}.txt").write_text("\n".join(texts))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, help="a folder for the run and the notebooks")
  parser.add_argument("--one_shot_runs", default=os.environ.get("VMA_ONE_SHOT_RUNS", str(
      REPO_ROOT.parent / "shared" / "data" / "omniglot_one_shot" / "all_runs.zip")))
  parser.add_argument("--notebooks", default="reproduce,explore",
                      help="which to run (explore alone explores OUT/run of an earlier run)")
  args = parser.parse_args()
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  FIGURES.mkdir(parents=True, exist_ok=True)
  common = dict(COMPILE_CACHE=str(out / "jax_cache"), INSTALL=False)
  if "reproduce" in args.notebooks:
    run("reproduce.ipynb", out, dict(WORKDIR=str(out / "run"), CONFIG="quick", TIMING_STEPS=10,
                                     CELLS="table1", NUM_TARGETS=64, NUM_IMPORTANCE=1000,
                                     **common))
  if "explore" in args.notebooks:
    run("explore.ipynb", out, dict(WORKDIR=str(out / "run"), OUT_DIR=str(out / "explore"),
                                   ONE_SHOT_RUNS=args.one_shot_runs, CLASSIFY_K=10,
                                   GROWTH_CELLS="1/1,1/5,1/19,1/50,1/100,1/200",
                                   GROWTH_TARGETS=64, GROWTH_K=100, **common))


if __name__ == "__main__":
  main()
