"""vma_jax: the Variational Memory Addressing VAE in JAX/Flax.

Modules, bottom to top (imports flow upwards only):

  distributions   log-densities: diagonal Gaussian, Bernoulli, categorical.
  networks        the conv encoder (e, h) and the skip-connected decoder.
  data            Omniglot through TFDS (offline from local archives), numpy cache.
  episodes        jittable few-shot episode sampling on device arrays.
  model           the VMA model: p(a), p(z|m_a), p(x|z,m_a), q(a|x,M), q(z|x,m_a),
                  and the per-sample log-weights log w_k.
  objective       the K-sample bound L_K, VIMCO surrogate, streaming large-K bound, KL(q(a)||p(a)).
  train           train_and_evaluate(config, workdir): one jitted train step, Orbax, CLU.
  evaluate        the Table 1 grid of few-shot bounds.
"""

__version__ = "0.1.0"
