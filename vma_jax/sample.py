"""Samples from a trained model with a memory the user chooses: `python sample.py`.

The memory is either `count` images of one test-split class (the target then another image of
that class), or a folder of the user's PNG images, preprocessed as the training data (ink is
the dark pixels; 105x105 images, Omniglot's size, are resized to the model's with nearest
neighbour; images already at the model's size are taken as they are), with an optional target
image. `draw` computes what the sheet shows, asking the model's read: q(a|x,M) of every slot
and the retrieved slot argmax_a q(a|x,M) (for a read with an address), N samples of the
target's posterior (`log_weights`; for the VMA a ~ q(a|x,M), z ~ q(z|x,m_a)), and N generated
from the memory alone (`generate`; for the VMA a ~ p(a), z ~ p(z|m_a));
`vma_jax.figures.sample_sheet` draws it.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np

from vma_jax import checkpoints
from vma_jax import data as vma_data
from vma_jax import files
from vma_jax import figures
from vma_jax import model as vma_model

OMNIGLOT_SIZE = vma_data.SOURCE_SIZE


class SampleError(ValueError):
  """A memory or target the command cannot use; the message says what is expected."""


@dataclasses.dataclass(frozen=True)
class Sheet:
  """What the sampling command shows (images in [0, 1], ink = 1)."""

  memory_TxHxW: np.ndarray
  dummies_DxHxW: np.ndarray  # the read's learned slots (D = 0 for a read without)
  x_HxW: np.ndarray | None  # the target, if any
  q_S: np.ndarray | None  # q(a|x,M) of the T memory slots, then the D learned ones
  posterior_NxHxW: np.ndarray | None  # means of p(x|z,...), samples of the target's posterior
  prior_NxHxW: np.ndarray  # means of p(x|z,...) generated from the memory alone

  @property
  def retrieved(self) -> int | None:
    """argmax_a q(a|x,M): a memory slot (< T) or a dummy (>= T)."""
    return None if self.q_S is None else int(np.argmax(self.q_S))

  def slot_name(self, a: int) -> str:
    """The sheet's name of slot a: m1 .. mT, then dummy 1 .. dummy D."""
    memory_size = len(self.memory_TxHxW)
    return f"m{a + 1}" if a < memory_size else f"dummy {a - memory_size + 1}"


def read_images(paths: list[str], image_size: int) -> np.ndarray:
  """Greyscale PNGs (ink dark on light paper) as the training data: uint8 ink masks NxHxW
  (`vma_jax.data.read_ink_png`)."""
  try:
    return np.stack([vma_data.read_ink_png(path, path, image_size) for path in paths])
  except vma_data.ImageError as e:
    raise SampleError(str(e)) from e


def memory_from_folder(folder: str, image_size: int) -> np.ndarray:
  """The .png images of `folder`, by file name, as a memory TxHxW."""
  if not os.path.isdir(folder):
    raise SampleError(f"{folder} is not a folder: --memory_dir takes a folder of PNG images")
  paths = sorted(glob.glob(os.path.join(folder, "*.png")))
  if not paths:
    raise SampleError(f"{folder} has no .png images: put the memory's images there "
                      f"(greyscale, {OMNIGLOT_SIZE}x{OMNIGLOT_SIZE} or {image_size}x{image_size})")
  return read_images(paths, image_size)


def memory_and_target_from_folder(folder: str, image_size: int):
  """The .png images of `folder` by file name: all but the last as the memory TxHxW, the
  last as the target HxW."""
  images_NxHxW = memory_from_folder(folder, image_size)
  if len(images_NxHxW) < 2:
    raise SampleError(f"{folder} has one .png image: put at least two there, the memory's "
                      "images and (the last by file name) the target")
  return images_NxHxW[:-1], images_NxHxW[-1]


def memory_from_class(split, class_index: int, count: int, seed: int = 0):
  """`count` images of class `class_index` of `split` as the memory, and one more of the
  class as the target, chosen at random with `seed`: (memory TxHxW, target HxW)."""
  num_classes = int(split.labels_N.max()) + 1
  if not 0 <= class_index < num_classes:
    raise SampleError(f"there is no test class {class_index}: the test split's classes are "
                      f"0 to {num_classes - 1}")
  index_P = np.flatnonzero(split.labels_N == class_index)
  if not 1 <= count < len(index_P):
    raise SampleError(f"{count} images of test class {class_index} asked for: it has "
                      f"{len(index_P)}, so the memory holds 1 to {len(index_P) - 1} of them "
                      "(one more is the target)")
  chosen = np.random.default_rng(seed).permutation(index_P)[:count + 1]
  return split.images_NxHxW[chosen[:count]], split.images_NxHxW[chosen[count]]


def memory_from_classes(split, classes, per_class: int, seed: int = 0):
  """`per_class` images of each class of `classes` (in that order) as the memory, and one
  more image of the first class as the target: (memory TxHxW, labels T, target HxW)."""
  classes = [int(c) for c in classes]
  if not classes:
    raise SampleError("give at least one test class for the memory")
  if len(set(classes)) < len(classes):
    raise SampleError(f"classes {classes}: each class once (per_class sets how many images)")
  rng = np.random.default_rng(seed)
  memory, labels = [], []
  for i, c in enumerate(classes):
    # The first class also gives the target: one image more.
    images_PxHxW, x_HxW = memory_from_class(split, c, per_class, int(rng.integers(2**31)))
    memory.append(images_PxHxW)
    labels += [c] * per_class
    if i == 0:
      target_HxW = x_HxW
  return np.concatenate(memory), np.asarray(labels), target_HxW


def draw(model: vma_model.Read, params, memory_TxHxW, x_HxW, *, num_generated: int,
         key: jax.Array) -> Sheet:
  """The sheet's numbers and images for one memory (and target, if `x_HxW` is not None)."""
  memory_1xTxHxW = jnp.asarray(memory_TxHxW, jnp.float32)[None]
  x_1xHxW = None if x_HxW is None else jnp.asarray(x_HxW, jnp.float32)[None]
  learned, q_S, posterior_NxHxW, prior_NxHxW = jax.device_get(
      _sheet_arrays(model, num_generated, params, memory_1xTxHxW, x_1xHxW, key))
  size = memory_1xTxHxW.shape[2:]
  learned_DxHxW = (np.zeros((0, *size), np.float32) if learned is None
                   else np.asarray(learned, np.float32))
  return Sheet(memory_TxHxW=np.asarray(memory_TxHxW, np.float32), dummies_DxHxW=learned_DxHxW,
               x_HxW=None if x_HxW is None else np.asarray(x_HxW, np.float32), q_S=q_S,
               posterior_NxHxW=posterior_NxHxW, prior_NxHxW=prior_NxHxW)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sheet_arrays(model, num_generated, params, memory_1xTxHxW, x_1xHxW, key):
  """(learned slots, q_S, posterior means, prior means) for `draw`, as one program: the model
  run op by op would compile each of its operations on first use."""
  memory_size = memory_1xTxHxW.shape[1]
  learned = model.apply(params, method="learned_slots")
  prior_key, posterior_key = jax.random.split(key)
  prior_1xNxHxW = model.apply(params, memory_1xTxHxW, prior_key, num_generated,
                              method="generate")
  q_S = posterior_NxHxW = None
  if x_1xHxW is not None:
    encoding = model.apply(params, x_1xHxW, memory_1xTxHxW, method="encode")
    address = model.apply(params, encoding, method="address")
    if address is not None:
      q_S = jax.nn.softmax(address.logits_BxS[0])
      # A read that addresses no memory slot puts no mass on them.
      q_S = jnp.concatenate([q_S[:address.memory_size],
                             jnp.zeros(memory_size - address.memory_size, q_S.dtype),
                             q_S[address.memory_size:]])
    keys_1xN = vma_model.sample_keys(posterior_key[None], 0, num_generated)
    weights = model.apply(params, x_1xHxW, encoding, keys_1xN, method="log_weights")
    posterior_NxHxW = jax.nn.sigmoid(weights.logits_BxKxHxW[0])
  return learned, q_S, posterior_NxHxW, prior_1xNxHxW[0]


def write_sheet(sheet: Sheet, path: str, title: str) -> str:
  """The sheet as a labelled PNG at `path`; an earlier file there is kept as <name>.<n>.png."""
  folder, name = os.path.split(os.path.abspath(path))
  files.keep_previous(folder, [name])
  fig = figures.sample_sheet(sheet.memory_TxHxW, sheet.dummies_DxHxW, sheet.q_S, sheet.x_HxW,
                             sheet.posterior_NxHxW, sheet.prior_NxHxW, title=title)
  figures.write_png(fig, path)
  return path


def sample_workdir(workdir: str, *, out: str | None = None, test_class: int | None = None,
                   count: int = 5, memory_dir: str | None = None, target: str | None = None,
                   num_generated: int = 8, seed: int = 0, step: int | None = None,
                   data_config=None) -> tuple[str, Sheet]:
  """Restores a run's checkpoint (default: the latest), draws the sheet for the memory given
  (`test_class` and `count`, or `memory_dir` and optionally `target`) and writes it to `out`
  (default: workdir/samples/<memory>.png). Returns (the PNG's path, the sheet)."""
  if (test_class is None) == (memory_dir is None):
    raise SampleError("give the memory as --test_class=<class> (with --count) or as "
                      "--memory_dir=<folder of PNG images>, not both or neither")
  if target is not None and memory_dir is None:
    raise SampleError("--target goes with --memory_dir; with --test_class the target is "
                      "another image of that class")
  params, step, config = checkpoints.restore_params(workdir, step)
  size = config.data.image_size
  if memory_dir is not None:
    memory_TxHxW = memory_from_folder(memory_dir, size)
    x_HxW = None if target is None else read_images([target], size)[0]
    name = os.path.basename(os.path.normpath(memory_dir))
    what = f"{len(memory_TxHxW)} images of {memory_dir}"
  else:
    split = vma_data.load_splits(data_config or config.data, splits=("test",))["test"]
    memory_TxHxW, x_HxW = memory_from_class(split, test_class, count, seed)
    name, what = f"class{test_class}_T{count}", f"{count} images of test class {test_class}"
  sheet = draw(vma_model.make_model(config), params, memory_TxHxW, x_HxW,
               num_generated=num_generated, key=jax.random.key(seed))
  out = out or os.path.join(workdir, "samples", f"{name}.png")
  title = f"{os.path.basename(os.path.normpath(workdir))}, step {step}: memory of {what}"
  return write_sheet(sheet, out, title), sheet
