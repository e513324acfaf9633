"""Speed-ups for XLA:CPU, opt-in: the same model and the same numbers, faster on a CPU host.

Nothing here changes what is computed; each piece replaces an XLA:CPU weak spot with an
equivalent formulation, and none of it is needed (or used by default) on GPU or TPU:

  convolution   conv2d whose kernel gradient runs as matrix products and whose strided
                input gradient runs as stride-1 convs, one per phase (a `jax.custom_vjp`).
  layers        drop-in variants of the networks' Encoder and Decoder on those kernels, with
                sub-pixel stride-2 transposed convs, the one-channel output layer as a matmul,
                and the skips' terms of the merge layers computed once per memory slot.
  host          process settings of a CPU-only host: one JAX device per core, and glibc
                allocator tunables (the entry points re-execute themselves with them).

`config.model.cpu_kernels` ("auto", "on", "off") chooses the layers: "auto" takes them when
JAX's default backend is the CPU. The host settings apply only on a CPU-only host.
"""
