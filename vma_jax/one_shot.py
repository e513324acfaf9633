"""Lake et al.'s 20-way one-shot classification runs of Omniglot, as they are distributed.

`all_runs.zip` (python/one-shot-classification/ of the public brendenlake/omniglot repository)
holds 20 runs, run01 .. run20, each within one alphabet of the evaluation set:

  runNN/training/class01.png .. class20.png   one image of each of the run's J = 20 classes
  runNN/test/item01.png .. item20.png         Q = 20 test images, one of each class
  runNN/class_labels.txt                      lines `runNN/test/itemMM.png runNN/training/classKK.png`

`load_runs` reads them from the zip or from a folder it was extracted to, with the images
preprocessed as the training data (ink = the dark pixels, `vma_jax.data.read_ink_png`: a
nearest-neighbour resize to the model's image size), and keeps each image's 105 x 105 ink mask
as distributed too (the model-free modified Hausdorff classifier of `vma_jax.classify` uses
them). Anything missing or malformed is a `OneShotError` naming the file (and line) and what
was expected. When a `SHA256SUMS` lies beside the zip, the zip's sha256 must match its line.

Where the runs are: the path given (`classify.py --runs`), else `$VMA_ONE_SHOT_RUNS`; either is
all_runs.zip, the folder holding it, or the folder it was extracted to.

Shape letters (docs/model.md): G runs, J classes of a run (its training images), Q test
images of a run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile

import numpy as np

from vma_jax import data as vma_data

RUNS_ENV = "VMA_ONE_SHOT_RUNS"
RUNS_FILE = "all_runs.zip"
RUNS_URL = ("https://github.com/brendenlake/omniglot/raw/master/python/one-shot-classification/"
            + RUNS_FILE)
CHECKSUMS_FILE = "SHA256SUMS"
NUM_RUNS = 20  # G
NUM_CLASSES = 20  # J, one training image each
NUM_TEST = 20  # Q
LABELS_FILE = "class_labels.txt"
# Error rates in % on these 400 trials, from Lake, Salakhutdinov and Tenenbaum, Science 2015.
PUBLISHED = (
    ("people", 4.5),
    ("Bayesian Program Learning", 3.3),
    ("modified Hausdorff distance on pixels", 38.8),
)
WHERE_FROM = (f"the file is python/one-shot-classification/{RUNS_FILE} of the public "
              f"brendenlake/omniglot repository ({RUNS_URL})")


class OneShotError(ValueError):
  """The one-shot runs are missing or malformed; the message names the file and what is
  expected."""


@dataclasses.dataclass(frozen=True)
class OneShotRun:
  """One 20-way run: its training images (the classes), its test images and their answers.

  Attributes:
    name: "run01" .. "run20".
    class_names_J: the training images' file names ("class01.png", ...), sorted.
    item_names_Q: the test images' file names ("item01.png", ...), sorted.
    train_JxHxW: uint8 ink masks of the training images, in the order of class_names_J.
    test_QxHxW: uint8 ink masks of the test images, in the order of item_names_Q.
    answer_Q: int32, the class (index into class_names_J) of each test image.
    source_train_JxHxW, source_test_QxHxW: the same images' uint8 ink masks as distributed,
      105 x 105 (`vma_data.SOURCE_SIZE`) and not resized; None for runs built without them.
  """

  name: str
  class_names_J: tuple[str, ...]
  item_names_Q: tuple[str, ...]
  train_JxHxW: np.ndarray
  test_QxHxW: np.ndarray
  answer_Q: np.ndarray
  source_train_JxHxW: np.ndarray | None = None
  source_test_QxHxW: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class OneShotRuns:
  """The runs, and where they were read from (`sha256` of the zip; '' for a folder)."""

  runs: tuple[OneShotRun, ...]
  source: str
  sha256: str = ""

  @property
  def train_GxJxHxW(self) -> np.ndarray:
    return np.stack([r.train_JxHxW for r in self.runs])

  @property
  def test_GxQxHxW(self) -> np.ndarray:
    return np.stack([r.test_QxHxW for r in self.runs])

  @property
  def answer_GxQ(self) -> np.ndarray:
    return np.stack([r.answer_Q for r in self.runs])

  @property
  def has_source(self) -> bool:
    """Whether every run keeps its 105 x 105 images (`load_runs` does)."""
    return all(r.source_train_JxHxW is not None and r.source_test_QxHxW is not None
               for r in self.runs)

  @property
  def source_train_GxJxHxW(self) -> np.ndarray:
    return np.stack([r.source_train_JxHxW for r in self.runs])

  @property
  def source_test_GxQxHxW(self) -> np.ndarray:
    return np.stack([r.source_test_QxHxW for r in self.runs])


def resolve_source(runs: str | None = None) -> str:
  """The runs' location: `runs` if given, else `$VMA_ONE_SHOT_RUNS`; a folder that holds
  all_runs.zip stands for the zip. Raises OneShotError when neither is set or it is absent."""
  path = runs or os.environ.get(RUNS_ENV)
  if not path:
    raise OneShotError(f"no one-shot runs given: pass --runs=<{RUNS_FILE} or the folder it was "
                       f"extracted to> or set ${RUNS_ENV}; {WHERE_FROM}")
  path = os.path.expanduser(path)
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, RUNS_FILE)):
    path = os.path.join(path, RUNS_FILE)
  if not os.path.exists(path):
    raise OneShotError(f"{path} does not exist; expected {RUNS_FILE} or the folder it was "
                       f"extracted to (run01 .. run{NUM_RUNS:02d}); {WHERE_FROM}")
  return path


def verify_checksum(zip_path: str) -> str:
  """The zip's sha256, checked against the SHA256SUMS beside it when that lists it."""
  got = vma_data.sha256(zip_path)
  folder = os.path.dirname(os.path.abspath(zip_path))
  try:
    expected = vma_data.read_checksums(folder).get(os.path.basename(zip_path))
  except vma_data.DataError as e:
    raise OneShotError(str(e)) from e
  if expected is not None and expected != got:
    raise OneShotError(f"{zip_path} has sha256 {got}, but "
                       f"{os.path.join(folder, CHECKSUMS_FILE)} expects {expected}: the file "
                       f"is damaged or another one; copy it again ({WHERE_FROM})")
  return got


class _Zip:
  """Members of the zip, by their path inside it."""

  def __init__(self, path: str):
    self.where = path
    try:
      self._zip = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
      raise OneShotError(f"{path} is not a readable zip ({e}); expected {RUNS_FILE}; "
                         f"{WHERE_FROM}") from e
    # Folders count as members too, also where the zip has no entry of their own.
    self._names = set()
    for n in self._zip.namelist():
      parts = n.rstrip("/").split("/")
      self._names |= {"/".join(parts[:i]) for i in range(1, len(parts) + 1)}

  def name(self, member: str) -> str:
    return f"{self.where}:{member}"

  def exists(self, member: str) -> bool:
    return member in self._names

  def listdir(self, folder: str) -> list[str]:
    prefix = folder + "/"
    return sorted(n[len(prefix):] for n in self._names
                  if n.startswith(prefix) and "/" not in n[len(prefix):] and n != folder)

  def read(self, member: str) -> bytes:
    try:
      return self._zip.read(member)
    except (zipfile.BadZipFile, OSError, KeyError) as e:
      raise OneShotError(f"{self.name(member)} cannot be read ({e}); copy {RUNS_FILE} again "
                         f"({WHERE_FROM})") from e

  def close(self):
    self._zip.close()


class _Folder:
  """Files under the folder the zip was extracted to."""

  def __init__(self, path: str):
    self.where = path

  def name(self, member: str) -> str:
    return os.path.join(self.where, member)

  def exists(self, member: str) -> bool:
    return os.path.exists(self.name(member))

  def listdir(self, folder: str) -> list[str]:
    return sorted(os.listdir(self.name(folder))) if os.path.isdir(self.name(folder)) else []

  def read(self, member: str) -> bytes:
    try:
      with open(self.name(member), "rb") as f:
        return f.read()
    except OSError as e:
      raise OneShotError(f"{self.name(member)} cannot be read ({e})") from e

  def close(self):
    pass


def _images(source, run: str, folder: str, stem: str, count: int, image_size: int):
  """The `count` PNGs of run/folder (names, ink masks resized to image_size, the 105 x 105
  ink masks as distributed), sorted by name."""
  where = f"{run}/{folder}"
  if not source.exists(where):
    raise OneShotError(f"{source.name(where)} is missing; expected a folder of {count} PNGs "
                       f"({stem}01.png .. {stem}{count:02d}.png)")
  names = [n for n in source.listdir(where) if n.lower().endswith(".png")]
  if len(names) != count:
    raise OneShotError(f"{source.name(where)} holds {len(names)} PNG images; expected {count} "
                       f"({stem}01.png .. {stem}{count:02d}.png)")
  images = []
  for n in names:
    member = f"{where}/{n}"
    try:
      images.append(vma_data.read_ink_png(source.read(member), source.name(member),
                                          vma_data.SOURCE_SIZE, sizes=(vma_data.SOURCE_SIZE,)))
    except vma_data.ImageError as e:
      raise OneShotError(str(e)) from e
  source_NxHxW = np.stack(images)
  # Decoded once: the resize is read_ink_png's own (`resize_nearest` of the 105 x 105 mask).
  resized_NxHxW = (source_NxHxW if image_size == vma_data.SOURCE_SIZE
                   else vma_data.resize_nearest(source_NxHxW, image_size))
  return tuple(names), resized_NxHxW, source_NxHxW


def _answers(source, run: str, class_names_J, item_names_Q) -> np.ndarray:
  """The class index of each test image, from run/class_labels.txt."""
  member = f"{run}/{LABELS_FILE}"
  if not source.exists(member):
    raise OneShotError(f"{source.name(member)} is missing; expected {NUM_TEST} lines "
                       f"'{run}/test/itemMM.png {run}/training/classKK.png', the answer of each "
                       "test image")
  try:
    text = source.read(member).decode("utf-8")
  except UnicodeDecodeError as e:
    raise OneShotError(f"{source.name(member)} is not text ({e}); expected lines "
                       f"'{run}/test/itemMM.png {run}/training/classKK.png'") from e
  item_index = {n: q for q, n in enumerate(item_names_Q)}
  class_index = {n: j for j, n in enumerate(class_names_J)}
  answer_Q = np.full(len(item_names_Q), -1, np.int32)
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    where = f"{source.name(member)}, line {n}"
    parts = line.split()
    match = [re.fullmatch(rf"{run}/{folder}/([^/]+\.png)", p)
             for p, folder in zip(parts, ("test", "training"))]
    if len(parts) != 2 or not all(match):
      raise OneShotError(f"{where}: cannot parse {line.strip()!r}; expected "
                         f"'{run}/test/itemMM.png {run}/training/classKK.png'")
    item, image = match[0].group(1), match[1].group(1)
    if item not in item_index:
      raise OneShotError(f"{where}: {run}/test/{item} is not among the run's test images "
                         f"({', '.join(item_names_Q)})")
    if image not in class_index:
      raise OneShotError(f"{where}: {run}/training/{image} is not among the run's training "
                         f"images ({', '.join(class_names_J)})")
    if answer_Q[item_index[item]] >= 0:
      raise OneShotError(f"{where}: {run}/test/{item} has a second answer; expected one line "
                         "per test image")
    answer_Q[item_index[item]] = class_index[image]
  missing = [item_names_Q[q] for q in np.flatnonzero(answer_Q < 0)]
  if missing:
    raise OneShotError(f"{source.name(member)} gives no answer for {', '.join(missing)}; "
                       "expected one line per test image")
  return answer_Q


def load_runs(path: str | None = None, image_size: int = 26) -> OneShotRuns:
  """The G = 20 runs of all_runs.zip (or the folder it was extracted to, or the folder that
  holds it; default `$VMA_ONE_SHOT_RUNS`), images as image_size x image_size ink masks, and
  as the 105 x 105 ink masks they are distributed as (`source_train_JxHxW`, ...).

  Raises OneShotError for a missing or malformed file, naming it and what was expected.
  """
  path = resolve_source(path)
  sha256 = ""
  if os.path.isdir(path):
    source = _Folder(path)
  else:
    sha256 = verify_checksum(path)
    source = _Zip(path)
  try:
    runs = []
    for r in range(1, NUM_RUNS + 1):
      run = f"run{r:02d}"
      if not source.exists(run):
        raise OneShotError(f"{source.name(run)} is missing; expected the {NUM_RUNS} runs "
                           f"run01 .. run{NUM_RUNS:02d} ({WHERE_FROM})")
      class_names_J, train_JxHxW, source_train_JxHxW = _images(
          source, run, "training", "class", NUM_CLASSES, image_size)
      item_names_Q, test_QxHxW, source_test_QxHxW = _images(
          source, run, "test", "item", NUM_TEST, image_size)
      runs.append(OneShotRun(run, class_names_J, item_names_Q, train_JxHxW, test_QxHxW,
                             _answers(source, run, class_names_J, item_names_Q),
                             source_train_JxHxW=source_train_JxHxW,
                             source_test_QxHxW=source_test_QxHxW))
  finally:
    source.close()
  return OneShotRuns(tuple(runs), source=os.path.abspath(path), sha256=sha256)
