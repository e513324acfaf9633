"""vma_jax: the Variational Memory Addressing VAE in JAX/Flax.

Modules, bottom to top (imports flow upwards only):

  distributions   log-densities: diagonal Gaussian, Bernoulli, categorical.
  convolution     conv2d: XLA's conv, its kernel gradient as matrix products on CPU.
  networks        the conv encoder (e, h) and the skip-connected decoder.
  data            Omniglot through TFDS (offline from local archives), numpy cache.
  distinct        a batch's repeated images, found on the device: each is encoded once.
  episodes        jittable few-shot episode sampling on device arrays.
  model           the VMA model: p(a), p(z|m_a), p(x|z,m_a), q(a|x,M), q(z|x,m_a),
                  and the per-sample log-weights log w_k.
  objective       the K-sample bound L_K, VIMCO surrogate, streaming large-K bound, KL(q(a)||p(a)).
  sharding        the device mesh: batches sharded, parameters replicated.
  host            CPU host settings made before JAX starts: one device per core, allocator.
  checkpoints     Orbax checkpoints and saved configs of a workdir.
  summaries       metrics.jsonl and PNG grids of few-shot generations.
  evaluate        the Table 1 grid of few-shot bounds (also the validation bound of training).
  train           train_and_evaluate(config, workdir): one jitted train step, Orbax, CLU.
"""

__version__ = "0.1.0"
