"""20-way one-shot classification of Lake et al.'s Omniglot runs with a trained model.

    python classify.py --workdir=runs/quick --runs=all_runs.zip --num_importance=100

The classifiers (`vma_jax/classify.py` says what each computes): "address", argmax of
q(a|x,M) with the run's 20 training images as the memory; "bound", argmax over the classes of
L_K(x | m_c); "combined", a heuristic sum of their log-softmaxes; "pixel", the nearest
training image in Hamming distance; "hausdorff", the nearest in modified Hausdorff distance
on the 105 x 105 images, Lake et al.'s own baseline. "pixel" and "hausdorff" need no model
and are the ones a model that reads no memory (the plain VAE) allows; "address" and
"combined" need a model with an address. K defaults to 1000; on a 2-core CPU use about 100
(400 x 20 bounds). The runs: --runs, else $VMA_ONE_SHOT_RUNS (all_runs.zip, from
python/one-shot-classification/ of the public brendenlake/omniglot repository).
Writes workdir/classify/results.{json,csv,md} and wrong.png (or under --out); earlier ones
there are kept as results.<n>.* and wrong.<n>.png.
"""

import sys

from absl import flags
from absl import logging

from vma_jax import checkpoints
from vma_jax import classify
from vma_jax import cli
from vma_jax import data
from vma_jax import one_shot

_WORKDIR = flags.DEFINE_string("workdir", "runs/quick", "The trained run to classify with.")
_RUNS = flags.DEFINE_string("runs", None, f"{one_shot.RUNS_FILE}, or the folder it was "
                            f"extracted to (default: ${one_shot.RUNS_ENV}).")
_NUM_IMPORTANCE = flags.DEFINE_integer(
    "num_importance", 1000, "K, samples of each bound L_K(x | m_c); a 2-core CPU wants ~100 "
    "(400 x 20 bounds).")
_CLASSIFIERS = flags.DEFINE_string("classifiers", ",".join(classify.CLASSIFIERS),
                                   f"Comma-separated, of {', '.join(classify.CLASSIFIERS)}.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
_SEED = flags.DEFINE_integer("seed", 0, "Fixes the bounds' samples.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 10, "Test images at once (each with its run's 20 images).")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 10, "Samples of each bound decoded at once.")
_NUM_RUNS = flags.DEFINE_integer(
    "num_runs", None, f"Classify only the first N of the {one_shot.NUM_RUNS} runs (20 trials "
    "each): a quicker, coarser look (default: all).")
_OUT = flags.DEFINE_string("out", None, "The output folder (default: workdir/classify).")


def main(argv):
  del argv  # every setting is a flag (cli.run refuses anything else)
  logging.set_verbosity(logging.INFO)
  # Mistakes in the command line first, each one line with exit status 2.
  try:
    classify.parse_classifiers(_CLASSIFIERS.value)
    classify.check_num_runs(_NUM_RUNS.value)
    one_shot.resolve_source(_RUNS.value)
  except (classify.ClassifyError, one_shot.OneShotError) as e:
    cli.exit_usage("classify.py", str(e))
  cli.require_workdir(_WORKDIR.value, "classify.py")
  if _STEP.value is not None:
    cli.require_step(_WORKDIR.value, _STEP.value, "classify.py")
  try:
    _, paths = classify.classify_workdir(
        _WORKDIR.value, runs=_RUNS.value, num_importance=_NUM_IMPORTANCE.value,
        classifiers=_CLASSIFIERS.value, step=_STEP.value, seed=_SEED.value,
        batch_size=_BATCH_SIZE.value, chunk_size=_CHUNK_SIZE.value,
        num_runs=_NUM_RUNS.value, out=_OUT.value)
  except (checkpoints.CheckpointError, data.DataError, one_shot.OneShotError,
          classify.ClassifyError, FloatingPointError) as e:
    sys.exit(f"classify.py: {e}")
  with open(paths["results.md"]) as md:
    print(md.read(), end="")
  print(f"wrote {', '.join(paths.values())}")


if __name__ == "__main__":
  cli.run(main, "classify.py")
