"""Samples from a trained VMA with a memory you choose, into one labelled PNG.

    python sample.py --workdir=runs/quick --test_class=7 --count=5
    python sample.py --workdir=runs/quick --memory_dir=my_letters --target=my_letters/x.png

The sheet shows the memory images and the model's dummy slots with q(a|x,M) under each and the
retrieved slot framed (when there is a target), samples of p(x|z,m_a) from the target's
posterior, and samples generated from the memory alone (a ~ p(a), z ~ p(z|m_a)). Written to
--out (default: workdir/samples/<memory>.png; an earlier file there is kept as <name>.<n>.png).
Your own images: greyscale PNGs with dark ink on light paper, 105x105 as Omniglot's (resized
as the training data) or already at the model's size (26x26).
"""

import sys

from absl import flags
from absl import logging

from vma_jax import checkpoints
from vma_jax import cli
from vma_jax import data
from vma_jax import sample

_WORKDIR = flags.DEFINE_string("workdir", "runs/quick", "The trained run to sample from.")
_TEST_CLASS = flags.DEFINE_integer(
    "test_class", None, "Memory from this class of the test split (0 to 658).")
_COUNT = flags.DEFINE_integer("count", 5, "With --test_class: the memory's size T.")
_MEMORY_DIR = flags.DEFINE_string("memory_dir", None, "Memory from this folder's PNG images.")
_TARGET = flags.DEFINE_string("target", None, "With --memory_dir: the target image (a PNG).")
_NUM_GENERATED = flags.DEFINE_integer("num_generated", 8, "Samples in each row.")
_SEED = flags.DEFINE_integer("seed", 0, "Fixes the images chosen and the samples.")
_STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the newest intact one).")
_OUT = flags.DEFINE_string("out", None, "The PNG to write.")


def main(argv):
  del argv  # every setting is a flag (cli.run refuses anything else)
  logging.set_verbosity(logging.INFO)
  cli.require_workdir(_WORKDIR.value, "sample.py")
  if _STEP.value is not None:
    cli.require_step(_WORKDIR.value, _STEP.value, "sample.py")
  try:
    path, sheet = sample.sample_workdir(
        _WORKDIR.value, out=_OUT.value, test_class=_TEST_CLASS.value, count=_COUNT.value,
        memory_dir=_MEMORY_DIR.value, target=_TARGET.value,
        num_generated=_NUM_GENERATED.value, seed=_SEED.value, step=_STEP.value)
  except (checkpoints.CheckpointError, data.DataError, sample.SampleError) as e:
    sys.exit(f"sample.py: {e}")
  retrieved = ("" if sheet.retrieved is None else
               f"; retrieved {sheet.slot_name(sheet.retrieved)}, "
               f"q(a|x,M) = {sheet.q_S[sheet.retrieved]:.2f}")
  print(f"wrote {path}{retrieved}")


if __name__ == "__main__":
  cli.run(main, "sample.py")
