"""vma_jax: the Variational Memory Addressing VAE in JAX/Flax.

Modules, bottom to top (imports flow upwards only):

  distributions   log-densities: diagonal Gaussian, Bernoulli, categorical.
  initializers    the layers' initial values: PyTorch's defaults (the reference's) or Flax's.
  networks        the conv encoder (e, h) and the skip-connected decoder, in stock Flax layers.
  cpu             opt-in speed-ups for XLA:CPU (`config.model.cpu_kernels`, on by default on a
                  CPU backend): the same networks on faster kernels, and host settings.
  data            Omniglot through TFDS (offline from local archives), numpy cache.
  distinct        a batch's repeated images, found on the device: each is encoded once.
  episodes        jittable few-shot episode sampling on device arrays.
  model           the VMA model: p(a), p(z|m_a), p(x|z,m_a), q(a|x,M), q(z|x,m_a),
                  and the per-sample log-weights log w_k.
  objective       the K-sample bound L_K, VIMCO surrogate, streaming large-K bound, KL(q(a)||p(a)).
  sharding        the device mesh: batches sharded, parameters replicated.
  distributed     runs on several hosts: the processes joined into one JAX program.
  checkpoints     Orbax checkpoints and saved configs of a workdir.
  summaries       metrics.jsonl and PNG grids of few-shot generations.
  evaluate        the Table 1 grid of few-shot bounds (also the validation bound of training).
  train           train_and_evaluate(config, workdir): one jitted train step, Orbax, CLU.
"""

__version__ = "0.1.0"
