"""The model of a config: the memory read that `config.model.memory_read` names, its
parameters, and the revision of the function they compute.

The reads are in `vma_jax.reads`: "hard" (`VMA`, the paper's stochastic address), "soft"
(`SoftAttentionVAE`) and "none" (`PlainVAE`), and any other registered with
`vma_jax.reads.register`. Every command builds its model with `make_model(config)`; the names
below are those the commands, benchmarks and notebooks use.
"""

import importlib

import jax
import jax.numpy as jnp

from vma_jax import errors
from vma_jax import reads
from vma_jax.reads.base import Address
from vma_jax.reads.base import CPU_KERNELS
from vma_jax.reads.base import LogWeights
from vma_jax.reads.base import Read
from vma_jax.reads.base import embed_every_slot
from vma_jax.reads.base import sample_keys
from vma_jax.reads.base import stack_rows
from vma_jax.reads.base import use_cpu_kernels
from vma_jax.reads.hard import VMA
from vma_jax.reads.none import PlainVAE
from vma_jax.reads.soft import SoftAttentionVAE

# The revision of the function that the reads' parameters compute. It goes up whenever that
# function changes without changing the parameters' shapes, so that a checkpoint of another
# revision is refused rather than evaluated as if it were this model (`vma_jax.checkpoints`).
REVISION = 2
REVISION_CHANGES = {
    2: "the decoder has no ReLU after its fc2 layer (docs/model.md, Networks); the default "
       "initialisation is PyTorch's (model.param_init = 'torch')",
}

# config.model.memory_read -> the read's class (`vma_jax.reads.register` adds to it).
MEMORY_READS = reads.READS

__all__ = ["MEMORY_READS", "Address", "CPU_KERNELS", "LogWeights", "PlainVAE", "REVISION", "Read",
           "SoftAttentionVAE", "VMA", "embed_every_slot", "init_params", "make_model",
           "sample_keys", "stack_rows", "use_cpu_kernels"]


def make_model(config) -> Read:
  """The model of a full experiment config (`config.model`, image size from `config.data`):
  the read that config.model.memory_read names (`MEMORY_READS`). A name with dots,
  "package.module.name", is a read that module registers: it is imported first."""
  fields = dict(config.model)
  memory_read = fields.pop("memory_read", "hard")
  if memory_read not in MEMORY_READS and "." in memory_read:
    # "package.module.name": a read of that module, which registers it when imported.
    module = memory_read.rpartition(".")[0]
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise errors.ConfigError(f"config.model.memory_read {memory_read!r}: cannot import "
                               f"{module} ({e}); put it on PYTHONPATH") from None
  if memory_read not in MEMORY_READS:
    raise errors.ConfigError(f"unknown config.model.memory_read {memory_read!r}; choose one of "
                             f"{', '.join(MEMORY_READS)}")
  return MEMORY_READS[memory_read](image_size=config.data.image_size, **fields)


def init_params(config, key):
  """Fresh variables of `make_model(config)`. Their shapes do not depend on T or K, so one
  dummy episode (B = T = K = 1) creates them. Jitted: one compile instead of one per
  operation of the model's forward pass (the same values)."""
  size = config.data.image_size
  x_BxHxW = jnp.zeros((1, size, size), jnp.float32)
  memory_BxTxHxW = jnp.zeros((1, 1, size, size), jnp.float32)
  keys_BxK = jax.random.split(jax.random.key(0), (1, 1))
  return jax.jit(make_model(config).init)(key, x_BxHxW, memory_BxTxHxW, keys_BxK)
