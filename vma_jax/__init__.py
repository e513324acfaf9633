"""vma_jax: the Variational Memory Addressing VAE in JAX/Flax.

Modules, bottom to top (each imports only modules above it in this list):

  errors          ConfigError: a setting that cannot run, named (anything else is a bug);
                  one-line accounts of errors.
  files           atomic writes, and earlier versions of a file kept beside the new one.
  runtime         this Python against the package's requirements: what to upgrade, what to
                  install without replacing a runtime's JAX (the notebooks' set-up cell).
  distributions   log-densities: diagonal Gaussian, Bernoulli, categorical.
  initializers    the layers' initial values: PyTorch's defaults (the reference's) or Flax's.
  sharding        the device mesh: batches sharded, parameters replicated.
  distributed     runs on several hosts: the processes joined into one JAX program.
  networks        the conv encoder (e, h) and the skip-connected decoder, in stock Flax layers.
  cpu             opt-in speed-ups for XLA:CPU (`config.model.cpu_kernels`, on by default on a
                  CPU backend): the same networks on faster kernels, and host settings.
  data            Omniglot through TFDS (offline from local archives), numpy cache; PNGs.
  one_shot        Lake et al.'s 20-way one-shot runs (all_runs.zip), read as the training data.
  distinct        a batch's repeated images, found on the device: each is encoded once.
  episodes        jittable few-shot episode sampling on device arrays; the data on the mesh.
  reads           memory reads behind one interface (encode, log-weights, generate, address),
                  and their registry: the VMA's hard address q(a|x,M), soft attention, none.
  model           the model of a config (the read config.model.memory_read names), its
                  initial parameters and revision.
  objective       the objective of the log-weights: L_K, the VIMCO surrogate and loss, its
                  per-step metrics, the large-K bound in chunks, where q(a|x,M) puts its mass.
  batches         a jitted function over many items in padded batches, read back with ETAs.
  cells           few-shot evaluation cells C:T (Table 1) and R/T (large memories): each
                  target's L_K for large K, in chunks.
  checkpoints     Orbax checkpoints (verified when restored) and saved configs of a workdir.
  cli             the commands' mistakes in one line, exit status 2 for a usage error.
  results         results files of an evaluation, the Table 1 reference numbers.
  figures         matplotlib figures: training curves, bound and KL against T, few-shot
                  grids, sample sheets, the address posterior over a memory.
  summaries       TensorBoard writers (TensorFlow only if asked for), metrics.jsonl, log lines,
                  progress.
  run             a training run's workdir, held by one object: lock, config, checkpoints
                  (restored, saved), metrics and figures; failed writes in one line.
  preemption      SIGTERM and Ctrl-C ask a run to stop after the step in flight, once saved.
  validation      what a training run watches on held-out episodes: a cell's bound, and a
                  few-shot image grid.
  evaluate        the Table 1 grid of few-shot bounds of a trained workdir, and its figures.
  sample          samples from a trained workdir with a memory the user chooses.
  classify        20-way one-shot classification of Lake et al.'s runs with a trained workdir.
  pretrained      a trained model exported to ship (params.msgpack, config, model.json,
                  results), which every command then loads as its --workdir.
  state           the train state: Adam (optax), fresh or replicated, and whether a
                  checkpoint's optimiser state fits it.
  train           train_and_evaluate(config, workdir): one jitted train step, Orbax, CLU.
  estimate        how long training and each evaluation cell take on this runtime, from
                  the measured time of their first steps (the reproduce notebook).

The model, its notation and the shape letters of tensor names: docs/model.md.
"""

__version__ = "0.1.0"
