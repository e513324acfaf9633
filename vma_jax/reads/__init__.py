"""Memory reads: how a model's generator reads the memory (`config.model.memory_read`).

`base` holds the interface every read answers, the registry READS and the pieces reads share;
each other module is one read and registers itself: "hard" (`hard.VMA`, the stochastic
address), "soft" (`soft.SoftAttentionVAE`, attention) and "none" (`none.PlainVAE`, no
memory). docs/model.md (Adding a read) says how to add one.
"""

# In the order the registry lists them.
from vma_jax.reads import hard  # pylint: disable=g-bad-import-order
from vma_jax.reads import soft
from vma_jax.reads import none
from vma_jax.reads.base import Address
from vma_jax.reads.base import LogWeights
from vma_jax.reads.base import READS
from vma_jax.reads.base import Read
from vma_jax.reads.base import register
