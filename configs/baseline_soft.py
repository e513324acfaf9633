"""Baseline: the memory read by soft attention, a deterministic mixture of every slot.

    python train.py --config=configs/baseline_soft.py --workdir=runs/soft
    python train.py --config=configs/baseline_soft.py:quick --workdir=runs/soft_quick
    python evaluate.py --workdir=runs/soft --num_importance=1000

`config.model.memory_read = "soft"` (`vma_jax.model.SoftAttentionVAE`): no address variable;
the generator reads sum_i w_i(z) [e(m_i), skips(m_i)] with attention weights from a query of
z, and is trained with L_K (no score-function term), on the same episodes, networks and
schedule as the VMA of configs/<base>.py, so the two are compared cell by cell
(docs/model.md, Baselines). Every sample reads every slot: a step costs more than the VMA's,
and more the larger T. Without ":quick" the recipe (configs/default.py, days of CPU); with
":quick" the quick run's schedule (configs/quick.py: 300 steps, about 4 minutes on a 2-core
CPU). Expected: the quick run's figures are in docs/results.md beside the VMA's.
"""

from configs import default
from configs import quick


def get_config(base: str = "default"):
  """Soft attention on the schedule and episodes of configs/<base>.py ("default" or "quick")."""
  config = {"default": default, "quick": quick}[base].get_config()
  config.model.memory_read = "soft"
  return config
