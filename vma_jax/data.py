"""Omniglot through TFDS, offline from local archives, cached as numpy arrays.

The TFDS `omniglot` builder (version 3.0.0) is the source of truth. Splits are TFDS's:
`train` (images_background, 964 classes x 20 drawers), `test` (images_evaluation,
659 x 20), and the small background subsets `small1`, `small2`.

Public API:

  load_omniglot(split, *, image_size=26, data_dir=None, archive_dir=None, scratch_dir=None)
                       -> OmniglotSplit
  load_splits(data_config) -> {"train": OmniglotSplit, "test": OmniglotSplit}
  get_data_config() -> ConfigDict(archive_dir='', data_dir='', image_size=26)
  OmniglotSplit        images_NxHxW (uint8, ink = 1), labels_N, alphabets_N (int32)
  DataError            a user-fixable problem (missing, damaged or mismatched data)
  resize_nearest(images_NxSxS, size), nearest_indices(src, dst)
  read_ink_png(source, name, image_size) -> HxW ink mask of one PNG (a path, bytes or a file)
  ImageError           a PNG that cannot be read as an Omniglot-style image

Where things live:

  data_dir     `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`. TFDS prepares there
               (`omniglot/3.0.0/`), and the numpy cache lives there
               (`vma_jax/omniglot-3.0.0/<split>-<size>px-nearest-v1.npz`).
  archive_dir  `$VMA_OMNIGLOT_DIR`: a folder with the four zips the builder downloads and
               a `SHA256SUMS` for them. Read-only; nothing is written there. When unset,
               TFDS downloads the zips as usual.

The first load runs TFDS (which needs TensorFlow); later loads read the cache with numpy
only, so training runs on machines without TensorFlow or TFDS. To prepare ahead:

  python -m vma_jax.data [--image_size 26] [--archive_dir DIR] [--data_dir DIR]
                         [--scratch_dir DIR]

Preprocessing: ink is where the decoded 105x105 pixel is 0 (PIL decodes to {0, 1},
TensorFlow to {0, 255}), then a nearest-neighbour resize with PIL's pixel mapping,
source index floor((i + 0.5) * 105 / size). Within a split, images are ordered by class,
and within a class by their pixels, so the order does not depend on TFDS's shuffling.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from typing import IO

from absl import logging
import ml_collections
import numpy as np

from vma_jax import files

SPLITS = ("train", "test", "small1", "small2")
TFDS_VERSION = "3.0.0"
SOURCE_SIZE = 105  # Omniglot images are 105x105.
CACHE_FORMAT = 1  # Bump when the preprocessing or the cache layout changes.
ARCHIVE_ENV = "VMA_OMNIGLOT_DIR"
CHECKSUMS_FILE = "SHA256SUMS"

# The zips the TFDS builder downloads (its `_DL_URLS`), by file name.
_DL_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
ARCHIVES = (
    "images_background.zip",
    "images_evaluation.zip",
    "images_background_small1.zip",
    "images_background_small2.zip",
)


class DataError(RuntimeError):
  """The data is missing, damaged or mismatched; the message says what to do."""


class ImageError(ValueError):
  """A PNG that `read_ink_png` cannot use; the message names it and says what is expected."""


@dataclasses.dataclass(frozen=True)
class OmniglotSplit:
  """One split as host arrays, ordered by class.

  Attributes:
    images_NxHxW: uint8 in {0, 1}, ink = 1.
    labels_N: int32 class ids, contiguous 0..num_classes-1 within the split.
    alphabets_N: int32 TFDS alphabet ids (0..49, shared by all splits).
    cache_path: the numpy cache the split was read from ('' if none).
  """

  images_NxHxW: np.ndarray
  labels_N: np.ndarray
  alphabets_N: np.ndarray
  cache_path: str = ""

  @property
  def num_images(self) -> int:
    return int(self.labels_N.shape[0])

  @property
  def num_classes(self) -> int:
    return int(self.labels_N.max()) + 1 if self.labels_N.size else 0

  @property
  def image_size(self) -> int:
    return int(self.images_NxHxW.shape[1])

  def __len__(self) -> int:
    return self.num_images


# ----------------------------------------------------------------------------------------
# Preprocessing.


def nearest_indices(src: int, dst: int) -> np.ndarray:
  """Source pixel of each output pixel: floor((i + 0.5) * src / dst), as PIL's NEAREST."""
  # Integer arithmetic: floor(((2i + 1) * src) / (2 dst)) is exact.
  i = np.arange(dst)
  return ((2 * i + 1) * src) // (2 * dst)


def resize_nearest(images_NxSxS: np.ndarray, size: int) -> np.ndarray:
  """Nearest-neighbour resize of square images to size x size; values are unchanged."""
  idx = nearest_indices(images_NxSxS.shape[-1], size)
  return images_NxSxS[:, idx[:, None], idx[None, :]]


def ink_from_decoded(images_NxSxSxC: np.ndarray) -> np.ndarray:
  """uint8 ink mask (1 = ink) of decoded Omniglot images.

  Omniglot PNGs are 1-bit with black ink; decoders give paper as 1 (PIL) or 255
  (TensorFlow), ink as 0 in both, so ink is exactly the zeros (no fixed threshold).
  """
  x = images_NxSxSxC[..., 0] if images_NxSxSxC.ndim == 4 else images_NxSxSxC
  return (x == 0).astype(np.uint8)


def read_ink_png(source: str | bytes | IO[bytes], name: str, image_size: int, *,
                 sizes: Sequence[int] | None = None) -> np.ndarray:
  """One greyscale PNG (dark ink on light paper) preprocessed as the training data.

  Ink is the dark pixels (< 128 once converted to 8-bit grey: the zeros of a 1-bit Omniglot
  PNG, as `ink_from_decoded`); an image larger than image_size x image_size is resized with
  `resize_nearest`. `source` is a path, the PNG's bytes or a binary file object (a zip
  member); `name` is what errors call it. `sizes` are the accepted sides (default:
  Omniglot's 105 and image_size). Returns a uint8 ink mask, image_size x image_size.
  Raises ImageError naming the file and what was expected.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top

  sizes = tuple(sizes) if sizes is not None else tuple(dict.fromkeys((SOURCE_SIZE, image_size)))
  sides = [f"{s}x{s}" + (" (Omniglot's size)" if s == SOURCE_SIZE else "") for s in sizes]
  expected = f"greyscale PNGs (mode '1' or 'L'), dark ink on light paper, of {' or '.join(sides)}"
  if isinstance(source, (bytes, bytearray)):
    source = io.BytesIO(source)
  try:
    with Image.open(source) as image:
      mode, size = image.mode, image.size
      pixels = np.asarray(image.convert("L"))
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f"{name} is not a readable image ({e}); expected {expected}") from e
  if mode not in ("1", "L"):
    raise ImageError(f"{name} has mode {mode!r}; expected {expected}. Convert it first "
                     "(e.g. PIL's image.convert('L')).")
  if size[0] != size[1] or size[0] not in sizes:
    raise ImageError(f"{name} is {size[0]}x{size[1]}; expected {expected}.")
  ink_HxW = (pixels < 128).astype(np.uint8)
  if size[0] != image_size:
    ink_HxW = resize_nearest(ink_HxW[None], image_size)[0]
  return ink_HxW


def _canonical_order(ink_NxSxS: np.ndarray, labels_N: np.ndarray) -> np.ndarray:
  """Permutation ordering images by label, then by their pixels (ties keep order)."""
  packed_NxB = np.packbits(ink_NxSxS.reshape(ink_NxSxS.shape[0], -1), axis=1)
  keys = [(int(label), row.tobytes()) for label, row in zip(labels_N, packed_NxB)]
  return np.array(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)


def preprocess(
    decoded_images: np.ndarray,
    tfds_labels_N: np.ndarray,
    tfds_alphabets_N: np.ndarray,
    image_size: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Decoded TFDS examples -> (images_NxHxW ink uint8, labels_N, alphabets_N), by class."""
  ink_NxSxS = ink_from_decoded(np.asarray(decoded_images))
  order = _canonical_order(ink_NxSxS, tfds_labels_N)
  # TFDS labels index all 1,623 characters; make them contiguous within the split.
  _, labels_N = np.unique(np.asarray(tfds_labels_N)[order], return_inverse=True)
  images_NxHxW = resize_nearest(ink_NxSxS[order], image_size)
  return (
      np.ascontiguousarray(images_NxHxW, dtype=np.uint8),
      labels_N.astype(np.int32).reshape(-1),
      np.asarray(tfds_alphabets_N)[order].astype(np.int32),
  )


# ----------------------------------------------------------------------------------------
# Paths and the numpy cache.


def default_data_dir() -> str:
  """TFDS's data dir: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
  return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def cache_path(data_dir: str, split: str, image_size: int) -> str:
  """Where the prepared arrays of `split` at `image_size` are cached."""
  name = f"{split}-{image_size}px-nearest-v{CACHE_FORMAT}.npz"
  return os.path.join(data_dir, "vma_jax", f"omniglot-{TFDS_VERSION}", name)


def _write_cache(path: str, images_NxHxW, labels_N, alphabets_N) -> None:
  # Atomic: an interrupted preparation leaves either no cache or a complete one.
  with files.atomic_write(path, "wb") as f:
    np.savez(f, images_NxHxW=images_NxHxW, labels_N=labels_N, alphabets_N=alphabets_N,
             cache_format=np.int32(CACHE_FORMAT))


def _read_cache(path: str) -> OmniglotSplit:
  try:
    with np.load(path) as f:
      if int(f["cache_format"]) != CACHE_FORMAT:
        raise ValueError(f"cache format {int(f['cache_format'])} != {CACHE_FORMAT}")
      return OmniglotSplit(
          images_NxHxW=f["images_NxHxW"],
          labels_N=f["labels_N"],
          alphabets_N=f["alphabets_N"],
          cache_path=path,
      )
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise DataError(
        f"Omniglot cache {path} is unreadable ({e}); expected an .npz written by"
        " vma_jax.data. Delete it and load again (or run `python -m vma_jax.data`)"
        " to rebuild it."
    ) from e


# ----------------------------------------------------------------------------------------
# Local archives: checks done before TFDS sees them, for clear errors.


def read_checksums(archive_dir: str) -> dict[str, str]:
  """{file name: sha256} from archive_dir/SHA256SUMS (`sha256sum` format); {} if absent."""
  path = os.path.join(archive_dir, CHECKSUMS_FILE)
  if not os.path.exists(path):
    return {}
  sums = {}
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.split()
      if len(parts) != 2 or len(parts[0]) != 64:
        raise DataError(
            f"{path}, line {n}: cannot parse {line.strip()!r}; expected"
            " '<64 hex sha256>  <file name>' as written by `sha256sum`. Fix the line."
        )
      sums[parts[1].lstrip("*")] = parts[0].lower()
  return sums


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def verify_archives(archive_dir: str, tfds_checksums: dict[str, str]) -> dict[str, str]:
  """Checks the four archives in archive_dir; returns {file name: sha256}.

  Each archive's sha256 must match archive_dir/SHA256SUMS, or TFDS's own checksum when
  SHA256SUMS does not list it (the original zips); each must be a readable zip.
  Raises DataError naming the file, what was expected and what to do.
  """
  if not os.path.isdir(archive_dir):
    raise DataError(
        f"Omniglot archive folder {archive_dir} does not exist (it comes from"
        f" archive_dir or ${ARCHIVE_ENV}). Expected a folder holding"
        f" {', '.join(ARCHIVES)} and their {CHECKSUMS_FILE}. Point ${ARCHIVE_ENV} at"
        " such a folder, or unset it to let TFDS download the archives."
    )
  listed = read_checksums(archive_dir)
  checksums = {}
  for name in ARCHIVES:
    path = os.path.join(archive_dir, name)
    if not os.path.isfile(path):
      raise DataError(
          f"{path} is missing: the TFDS omniglot builder needs all of"
          f" {', '.join(ARCHIVES)}. Copy it there (from {_DL_URL}{name}), or unset"
          f" ${ARCHIVE_ENV} to let TFDS download the archives."
      )
    expected = listed.get(name) or tfds_checksums.get(name)
    where = f"{os.path.join(archive_dir, CHECKSUMS_FILE)}" if name in listed else "TFDS"
    if expected is None:
      raise DataError(
          f"{path} has no checksum: it is not in {os.path.join(archive_dir, CHECKSUMS_FILE)}"
          " and TFDS has none. Add its line (`sha256sum " + name + "`) to"
          f" {CHECKSUMS_FILE}."
      )
    got = sha256(path)
    if got != expected:
      raise DataError(
          f"{path} has sha256 {got}, but {where} expects {expected}. The file is"
          f" damaged or not the one listed: copy it again (from {_DL_URL}{name} or the"
          f" faithful rebuild), or, if the file is right, correct {CHECKSUMS_FILE}."
      )
    try:
      with zipfile.ZipFile(path) as z:
        bad = z.testzip()
        if bad is not None:
          raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
        if not any(n.lower().endswith(".png") for n in z.namelist()):
          raise zipfile.BadZipFile("it holds no PNG images")
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise DataError(
          f"{path} is not a readable Omniglot zip ({e}); expected a zip of"
          f" {name[:-4]}/<Alphabet>/characterNN/NNNN_DD.png. Copy it again (from"
          f" {_DL_URL}{name} or the faithful rebuild) and update its {CHECKSUMS_FILE}"
          " line."
      ) from e
    checksums[name] = got
  return checksums


# ----------------------------------------------------------------------------------------
# TFDS preparation (imports TensorFlow; only runs when there is no cache).


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from tensorflow_datasets.image_classification import omniglot  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        f"Preparing Omniglot needs tensorflow-datasets and tensorflow ({e}). Install"
        " them (`pip install -e .` installs both), or run `python -m vma_jax.data` on a"
        " machine that has them and copy its data_dir's vma_jax/ folder here."
    ) from e
  return tfds, omniglot


def _local_builder(tfds, omniglot, data_dir: str, archive_dir: str, checksums: dict):
  """The TFDS omniglot builder, told the local archives' checksums.

  TFDS checks a manually supplied file against its own checksum table; the rebuilt
  large zips differ from it, and registering checksums would rewrite a file in
  site-packages. Instead a subclass (not registered) reports the local checksums as its
  URL infos; everything else is the builder's own code.
  """
  url_infos = {}
  for url in omniglot._DL_URLS.values():  # pylint: disable=protected-access
    name = url.rsplit("/", 1)[-1]
    url_infos[url] = tfds.core.download.checksums.UrlInfo(
        size=os.path.getsize(os.path.join(archive_dir, name)),
        checksum=checksums[name],
        filename=name,
    )

  class LocalOmniglot(omniglot.Omniglot, skip_registration=True):
    name = "omniglot"

    @tfds.core.utils.classproperty
    @classmethod
    def url_infos(cls):
      return url_infos

  return LocalOmniglot(data_dir=data_dir)


@contextlib.contextmanager
def _progress_bars_only_on_a_terminal(tfds):
  """TFDS's progress bars off for the block where stderr is not a terminal, as TFDS had
  them otherwise (and after the block).

  Off a terminal, each of TFDS's bars writes a new line per update: some 200,000 lines
  (20 MB) of a log file for one preparation.
  """
  tqdm_utils = tfds.core.utils.tqdm_utils
  was_active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(was_active and sys.stderr.isatty())
  try:
    yield
  finally:
    tfds.display_progress_bar(was_active)


def _tfds_keeps(member: zipfile.ZipInfo) -> bool:
  """Whether TFDS's zip extractor writes this member (it skips folders and hidden names)."""
  path = os.path.normpath(member.filename)
  return not (member.is_dir() or path.startswith(".") or os.path.isabs(path)
              or path.endswith("~") or os.path.basename(path).startswith("."))


def _extract_for_tfds(archive_dir: str, extract_dir: str) -> None:
  """Extracts each archive where TFDS's download manager looks for an earlier extraction
  (`<extract_dir>/ZIP.<archive name>`), the members its extractor would write, so that TFDS
  reuses them. TFDS's extractor writes each of the 38,000 PNGs through TensorFlow's file I/O
  from eight threads: 10 to 20 s more CPU per preparation on 2 cores."""
  for name in ARCHIVES:
    with zipfile.ZipFile(os.path.join(archive_dir, name)) as archive:
      archive.extractall(os.path.join(extract_dir, f"ZIP.{name}"),
                         members=[m for m in archive.infolist() if _tfds_keeps(m)])


def _tfds_checksums(omniglot) -> dict[str, str]:
  infos = omniglot.Omniglot.url_infos or {}
  return {info.filename or url.rsplit("/", 1)[-1]: info.checksum for url, info in infos.items()}


def _load_with_tfds(split: str, data_dir: str, archive_dir: str | None,
                    scratch_dir: str | None = None) -> dict[str, np.ndarray]:
  """Prepares omniglot with TFDS if needed; returns the split's decoded examples."""
  tfds, omniglot = _import_tfds()
  if archive_dir:
    builder = tfds.builder("omniglot", data_dir=data_dir)
    if not builder.is_prepared():
      checksums = verify_archives(archive_dir, _tfds_checksums(omniglot))
      builder = _local_builder(tfds, omniglot, data_dir, archive_dir, checksums)
      # Extract into a scratch folder (never next to the archives), removed afterwards: the
      # extracted PNGs are ~160 MB and not needed once prepared.
      os.makedirs(data_dir, exist_ok=True)
      scratch = tempfile.mkdtemp(prefix="omniglot-extract-", dir=scratch_dir or data_dir)
      logging.info("Preparing Omniglot with TFDS from %s into %s (once)", archive_dir, data_dir)
      try:
        _extract_for_tfds(archive_dir, scratch)
        with _progress_bars_only_on_a_terminal(tfds):
          builder.download_and_prepare(
              download_dir=scratch,
              download_config=tfds.download.DownloadConfig(
                  manual_dir=archive_dir, extract_dir=scratch),
          )
      finally:
        shutil.rmtree(scratch, ignore_errors=True)
  else:
    builder = tfds.builder("omniglot", data_dir=data_dir)
    try:
      with _progress_bars_only_on_a_terminal(tfds):
        builder.download_and_prepare()
    except tfds.core.download.download_manager.NonMatchingChecksumError as e:
      raise DataError(
          f"TFDS downloaded an Omniglot archive whose checksum differs from its table"
          f" ({e}). Download the four zips yourself into a folder with a {CHECKSUMS_FILE}"
          f" and set ${ARCHIVE_ENV} to it."
      ) from e
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(
          f"TFDS could not download Omniglot into {data_dir} ({type(e).__name__}: {e})."
          f" Without network access, put {', '.join(ARCHIVES)} and their"
          f" {CHECKSUMS_FILE} in a folder and set ${ARCHIVE_ENV} to it."
      ) from e
  # Batches rather than batch_size=-1: TFDS's mock generator (tests) aborts on the latter.
  # Images keep one channel of TFDS's three (Omniglot's are grey): a third of the memory.
  batches = [dict(b, image=np.ascontiguousarray(b["image"][..., 0]))
             for b in tfds.as_numpy(builder.as_dataset(split=split).batch(4096))]
  return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# ----------------------------------------------------------------------------------------
# Public loaders.


def load_omniglot(
    split: str,
    *,
    image_size: int = 26,
    data_dir: str | None = None,
    archive_dir: str | None = None,
    scratch_dir: str | None = None,
) -> OmniglotSplit:
  """Loads one Omniglot split as ink images of image_size x image_size, by class.

  Reads the numpy cache in data_dir if present (no TensorFlow); else prepares the
  TFDS omniglot dataset (from archive_dir if given, else by downloading) and writes
  the cache. None or '' mean: data_dir = `$TFDS_DATA_DIR` or `~/tensorflow_datasets`,
  archive_dir = `$VMA_OMNIGLOT_DIR` or unset. Preparing from archive_dir extracts the
  archives (38,000 PNGs, ~160 MB) into a temporary folder of scratch_dir (default:
  data_dir), removed afterwards; a RAM disk there (/dev/shm) halves the time where data_dir
  is on a slow disk.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if not 1 <= image_size <= SOURCE_SIZE:
    raise ValueError(f"image_size must be in 1..{SOURCE_SIZE}, got {image_size}")
  data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
  archive_dir = archive_dir or os.environ.get(ARCHIVE_ENV) or None
  if archive_dir:
    archive_dir = os.path.expanduser(archive_dir)
  if scratch_dir:
    scratch_dir = os.path.expanduser(scratch_dir)
    if not os.path.isdir(scratch_dir):
      raise DataError(f"scratch folder {scratch_dir} does not exist: create it, or leave"
                      " scratch_dir unset to extract the archives inside data_dir.")

  path = cache_path(data_dir, split, image_size)
  if os.path.exists(path):
    return _read_cache(path)

  examples = _load_with_tfds(split, data_dir, archive_dir, scratch_dir)
  images_NxHxW, labels_N, alphabets_N = preprocess(
      examples["image"], examples["label"], examples["alphabet"], image_size
  )
  _write_cache(path, images_NxHxW, labels_N, alphabets_N)
  return OmniglotSplit(images_NxHxW, labels_N, alphabets_N, cache_path=path)


def get_data_config() -> ml_collections.ConfigDict:
  """Data config with defaults; configs embed it as `config.data`. '' means unset."""
  config = ml_collections.ConfigDict()
  config.archive_dir = ""  # '' -> $VMA_OMNIGLOT_DIR, else TFDS downloads.
  config.data_dir = ""  # '' -> $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  config.image_size = 26
  return config


def load_splits(data_config: ml_collections.ConfigDict,
                splits: Sequence[str] = ("train", "test")) -> dict[str, OmniglotSplit]:
  """{"train": ..., "test": ...} (or the `splits` asked for) for a data config (see
  get_data_config)."""
  return {
      split: load_omniglot(
          split,
          image_size=int(data_config.image_size),
          data_dir=data_config.data_dir or None,
          archive_dir=data_config.archive_dir or None,
      )
      for split in splits
  }


def summary(splits: dict[str, OmniglotSplit]) -> dict:
  """Per split: number of images and classes, image size and cache path."""
  return {
      name: {
          "num_images": s.num_images,
          "num_classes": s.num_classes,
          "image_size": s.image_size,
          "cache_path": s.cache_path,
      }
      for name, s in splits.items()
  }


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m vma_jax.data",
      description=(
          "Prepares (or finds) the Omniglot numpy cache and prints a JSON summary on"
          " its last line. Honours $TFDS_DATA_DIR and $VMA_OMNIGLOT_DIR."
      ),
  )
  parser.add_argument("--image_size", type=int, default=26)
  parser.add_argument("--archive_dir", default="", help=f"default: ${ARCHIVE_ENV}")
  parser.add_argument("--data_dir", default="",
                      help="default: $TFDS_DATA_DIR or ~/tensorflow_datasets")
  parser.add_argument("--splits", default="train,test",
                      help="comma-separated, of " + ",".join(SPLITS))
  parser.add_argument("--scratch_dir", default="",
                      help="where to extract the archives while preparing (default:"
                      " data_dir); e.g. /dev/shm")
  args = parser.parse_args(argv)
  try:
    splits = {
        split: load_omniglot(
            split,
            image_size=args.image_size,
            data_dir=args.data_dir or None,
            archive_dir=args.archive_dir or None,
            scratch_dir=args.scratch_dir or None,
        )
        for split in args.splits.split(",")
    }
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(summary(splits)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
