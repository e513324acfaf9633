"""Table 1 cell (C=2, T=3): the recipe trained and evaluated on this cell's episodes.

Training episodes have memories of T = 3 images from c ~ U(1..2) classes, the
target's class among them (see configs/cell.py); everything else is configs/default.py.

    python train.py --config=configs/c2_m3.py --workdir=runs/c2_m3
    python evaluate.py --workdir=runs/c2_m3 --cells=config

Produces: runs/c2_m3/ with checkpoints, metrics.jsonl and TensorBoard summaries; the
evaluation reports ELBO@1000 on the test split at cell (C=2, T=3) (docs/model.md, Table 1, for
the paper's and the reproduction's numbers). Time: one to three days on a 2-core CPU
(100,000 steps of 256 episodes at about 1.1 s per step for T = 1, 2.6 s for T = 19;
docs/performance.md); on one GPU not measured yet.
"""

from configs import cell


def get_config():
  return cell.get_cell_config(max_classes=2, memory_size=3)
