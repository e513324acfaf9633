"""The reproduction recipe: one model for the whole Table 1 grid.

Adam (lr 1e-4), 256 episodes per batch, 100,000 steps, K = 4 samples with the arithmetic VIMCO
baseline; training memories of T = 32 images, 4 per class (the target's class and 7 others).

    python train.py --config=configs/default.py --workdir=runs/default
    python evaluate.py --workdir=runs/default --num_importance=1000

Expected: ELBO@1000 of about 85 nats at (C=1, T=1) down to about 72 at (C=1, T=19) on the
Omniglot test split (the reproduction's row of docs/model.md, Table 1); see docs/results.md for what this project
measured. Time: about four days on a 2-core CPU (3.4 s per step) and up to 9 hours for the
evaluation (docs/performance.md); on one GPU not measured yet.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Omniglot through TFDS. '' = unset: archive_dir falls back to $VMA_OMNIGLOT_DIR (offline
  # preparation from the four archives) and data_dir to $TFDS_DATA_DIR, then ~/tensorflow_datasets.
  config.data = ml_collections.ConfigDict(dict(archive_dir="", data_dir="", image_size=26))

  # vma_jax.model.VMA fields (the image size comes from config.data). param_init: the layers'
  # initial values, "torch" (PyTorch's defaults, as the reference) or "flax" (lecun_normal
  # kernels, zero biases). cpu_kernels: "auto" takes vma_jax.cpu's layers (the same function,
  # faster on XLA:CPU) when the backend is the CPU, stock Flax layers elsewhere; "on"/"off".
  # memory_read: "hard" (the VMA's stochastic address), or a baseline: "soft" (attention) or
  # "none" (a plain VAE), vma_jax.model.MEMORY_READS and configs/baseline_*.py.
  config.model = ml_collections.ConfigDict(
      dict(latent_dim=64, embed_dim=128, match_dim=200, num_dummies=2, param_init="torch",
           dtype="float32", cpu_kernels="auto", memory_read="hard"))

  # Training episodes. composition "classes": memory_size images, per_class of each class (the
  # target's class plus memory_size // per_class - 1 others). composition "cell": the
  # evaluation composition of Table 1 cell (max_classes, memory_size).
  config.episodes = ml_collections.ConfigDict(
      dict(composition="classes", memory_size=32, per_class=4, max_classes=2))

  config.objective = ml_collections.ConfigDict(dict(num_importance=4, baseline="arithmetic"))

  config.optim = ml_collections.ConfigDict(
      dict(name="adam", lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=0.0))

  # tensorboard: event files (CLU, which imports TensorFlow); off, a run never imports it.
  config.train = ml_collections.ConfigDict(
      dict(batch_size=256, num_steps=100_000, log_every=100, checkpoint_every=2_000,
           max_checkpoints=3, validate_every=5_000, image_every=5_000, tensorboard=True))

  # Periodic validation bound during training, on test-split episodes of one cell.
  config.validation = ml_collections.ConfigDict(
      dict(max_classes=1, memory_size=5, num_targets=1024, num_importance=100, batch_size=256,
           chunk_size=100))

  # evaluate.py: Table 1 cells "C:T,...", K importance samples, targets (0 = all 13,180).
  config.eval = ml_collections.ConfigDict(
      dict(cells="1:1,1:2,1:3,1:4,1:5,1:10,1:19,2:1,2:2,2:3,2:4,2:5,2:10,2:19",
           num_importance=1000, num_targets=0, batch_size=16, chunk_size=100, seed=0))
  return config
