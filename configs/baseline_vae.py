"""Baseline: a plain VAE, the recipe's networks with no memory (T = 0: the D dummies only).

    python train.py --config=configs/baseline_vae.py --workdir=runs/vae
    python train.py --config=configs/baseline_vae.py:quick --workdir=runs/vae_quick
    python evaluate.py --workdir=runs/vae --num_importance=1000

`config.model.memory_read = "none"` (`vma_jax.model.PlainVAE`): the generator's only slots are
the D = 2 learned dummy images, so p(x) is a VAE with two learned pseudo-inputs, and the
memory of an evaluation episode is ignored: every cell of the grid gives the same bound, the
line that the memory models must beat. Without ":quick" the recipe's schedule
(configs/default.py: batch 256, 100,000 steps; days of CPU, see docs/performance.md); with
":quick" the quick run's (configs/quick.py: 300 steps, 3-4 minutes on a 2-core CPU).
Expected: well above the memory models: a plain VAE on this split reaches about 89-101 nats
at K = 1000 when fully trained; the quick run's figures are in docs/results.md.
"""

from configs import default
from configs import quick


def get_config(base: str = "default"):
  """The plain VAE on the schedule of configs/<base>.py ("default" or "quick")."""
  config = {"default": default, "quick": quick}[base].get_config()
  config.model.memory_read = "none"
  config.episodes.memory_size = 0  # nothing to read: no memory is drawn for training
  return config
