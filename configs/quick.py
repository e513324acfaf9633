"""A quick CPU run that visibly learns: the recipe's model, small batches, a short run.

    python train.py --config=configs/quick.py --workdir=runs/quick
    python evaluate.py --workdir=runs/quick --cells=config

Trains the reference-size model (1.1M parameters, PyTorch's default init as the reference)
for 300 steps of 32 episodes with memories of T = 4 images (2 classes x 2, as the recipe
composes its memories) and K = 4 samples, Adam at lr 1e-3 (at 3e-4 the address network stays
uniform for most of the 300 steps: docs/training.md). Produces runs/quick/ with checkpoints,
metrics.jsonl, TensorBoard summaries and PNG grids of few-shot generations (images/). The
training bound -L_4 falls from about 410 nats (untrained) to about 132 nats, and q(a|x,M)
comes to address the target's class in about 70% of samples (chance: 33%); the validation
bound (-L_10 on 256 test targets of cell C=1, T=5) is logged at steps 150 and 300 (about 135
and 131 nats). Time: 3-4 minutes on a 2-core CPU, ~2 steps/s.

Expected evaluation: ELBO@1000 of about 128.7 ± 2.5 nats at cell C=1, T=5 on 256 test targets
spread over all 659 classes (docs/results.md has the measured runs and their times).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.episodes.update(composition="classes", memory_size=4, per_class=2)
  config.objective.num_importance = 4
  config.optim.lr = 1e-3
  config.train.update(batch_size=32, num_steps=300, log_every=25, checkpoint_every=100,
                      max_checkpoints=3, validate_every=150, image_every=150)
  config.validation.update(max_classes=1, memory_size=5, num_targets=256, num_importance=10,
                           batch_size=64, chunk_size=10)
  config.eval.update(cells="1:5", num_targets=256)
  return config
