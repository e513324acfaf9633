"""The documentation matches the code: the API page builds from the docstrings, every docs/
page the code cites exists (with the section named), and modules import only those below
them."""

import ast
import pathlib
import re

import pytest

from docs import make_api
from helpers import REPO_ROOT

SOURCES = sorted(
    [*REPO_ROOT.glob("vma_jax/**/*.py"), *REPO_ROOT.glob("configs/*.py"),
     *REPO_ROOT.glob("benchmarks/*.py"), *REPO_ROOT.glob("tests/*.py"),
     REPO_ROOT / "train.py", REPO_ROOT / "evaluate.py"])
SOURCES.remove(pathlib.Path(__file__).resolve())  # its own patterns are not citations


def _headings(path: pathlib.Path) -> set[str]:
  return {line.lstrip("#").strip() for line in path.read_text().splitlines()
          if line.startswith("#")}


def test_api_page_builds_from_the_docstrings():
  page = make_api.render()
  sections = re.findall(r"^## `(vma_jax[\w.]*)`", page, re.M)
  assert sections == make_api.module_names()
  assert "### `def train_and_evaluate(" in page and "### `def vimco_surrogate(" in page


def test_every_cited_doc_and_section_exists():
  cited = 0
  for source in SOURCES:
    text = source.read_text()
    # A bare "model.md" (not docs/model.md) would point outside the repository.
    assert not re.search(r"(?<![/\w])model\.md", text), f"{source}: cite docs/model.md"
    for page, section in re.findall(r"docs/(\w+\.md)(?:, ([A-Z][\w\s-]*\w))?", text):
      section = " ".join(section.split())  # a citation may wrap across lines
      path = REPO_ROOT / "docs" / page
      assert path.exists(), f"{source} cites docs/{page}, which does not exist"
      if section and page == "model.md":
        # "docs/model.md, Table 1, for ..." cites the section "Table 1".
        matches = [h for h in _headings(path) if section.startswith(h)]
        assert matches, f"{source} cites section {section!r} of docs/{page}"
      cited += 1
  assert cited > 20  # the configs, the model and the tests cite it


def _layers() -> list[str]:
  return [name.rsplit(".", 1)[-1] for name in make_api.module_names()
          if name.count(".") == 1]


def _imported_modules(path: pathlib.Path) -> set[str]:
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "vma_jax":
        names |= {alias.name for alias in node.names}
      elif node.module.startswith("vma_jax."):
        names.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vma_jax.")}
  return names


@pytest.mark.parametrize("module", _layers())
def test_modules_import_only_the_layers_below_them(module):
  layers = _layers()
  below = set(layers[:layers.index(module)])
  package = REPO_ROOT / "vma_jax" / module
  paths = sorted(package.glob("*.py")) if package.is_dir() else [package.with_suffix(".py")]
  for path in paths:
    imported = _imported_modules(path) - {module}
    assert imported <= below, f"{path.name} imports {sorted(imported - below)} from above it"
