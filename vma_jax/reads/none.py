"""No read: a plain VAE whose only slots are the D learned dummies (the VMA with T = 0).

The memory of an episode is ignored, so its bound on every cell is the same: p(a) =
Uniform(D), and a plain VAE with D learned pseudo-inputs. Trained with T = 0
(configs/baseline_vae.py).
"""

from vma_jax.reads import base
from vma_jax.reads import hard
from vma_jax.reads import slots as slots_lib


@base.register("none")
class PlainVAE(base.Read):
  """The hard read (`vma_jax.reads.hard`) on the dummies alone."""

  reads_memory = False

  def setup(self):
    super().setup()
    self.dummies_DxHxW = slots_lib.dummies(self)

  def encode(self, x_BxHxW, memory_BxTxHxW, embed_slots=True, distinct=None) -> hard.Encoding:
    del distinct  # the rows of the memory, which is dropped
    return hard.encode(self, self.dummies_DxHxW, x_BxHxW, memory_BxTxHxW[:, :0], embed_slots)

  def log_weights(self, x_BxHxW, encoding: hard.Encoding, keys_BxK) -> base.LogWeights:
    return hard.log_weights(self, self.dummies_DxHxW, x_BxHxW, encoding, keys_BxK)

  def generate(self, memory_BxTxHxW, key, num_samples, x_BxHxW=None):
    return hard.generate(self, self.dummies_DxHxW, memory_BxTxHxW[:, :0], key, num_samples,
                         x_BxHxW)

  def address(self, encoding: hard.Encoding) -> base.Address:
    return hard.address(encoding)  # over the D dummies: memory_size = 0

  def learned_slots(self):
    return self.dummies_DxHxW
