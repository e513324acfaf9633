"""20-way one-shot classification of Lake et al.'s Omniglot runs with a trained VMA.

    python classify.py --workdir=runs/quick --runs=all_runs.zip --num_importance=100

The classifiers (`vma_jax/classify.py` says what each computes): "address", argmax of
q(a|x,M) with the run's 20 training images as the memory; "bound", argmax over the classes of
L_K(x | m_c); "combined", a heuristic sum of their log-softmaxes; "pixel", the nearest
training image in Hamming distance; "hausdorff", the nearest in modified Hausdorff distance
on the 105 x 105 images, Lake et al.'s own baseline. "pixel" and "hausdorff" need no model
and are the ones a plain VAE allows. K defaults to 1000; on a 2-core CPU use about 100
(400 x 20 bounds). The runs: --runs, else $VMA_ONE_SHOT_RUNS (all_runs.zip, from
python/one-shot-classification/ of the public brendenlake/omniglot repository).
Writes workdir/classify/results.{json,csv,md} and wrong.png (or under --out); earlier ones
there are kept as results.<n>.* and wrong.<n>.png. The same command:
`python -m vma_jax.classify`.
"""

from vma_jax import classify
from vma_jax import cli

classify.define_flags()

if __name__ == "__main__":
  cli.run(classify.main, "classify.py")
