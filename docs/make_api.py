"""Writes docs/api.md from the package's docstrings: `python docs/make_api.py`.

One section per module, in the order of the package docstring (`vma_jax/__init__.py`): the
module's docstring, then each public function and class with its parameters and the first
paragraph of its docstring (`help(...)` has the rest). The page is built, not kept in the
repository (it is gitignored), so it is always the code's; tests/test_docs.py builds it.
"""

import importlib
import inspect
import os
import re
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

OUT = os.path.join(_ROOT, "docs", "api.md")
HEADER = """# API

Generated from the docstrings by `python docs/make_api.py`; do not edit by hand. Notation
and shape letters: [model.md](model.md#notation-and-shape-letters).
"""


def module_names() -> list[str]:
  """The modules the package docstring lists, in its order (`cpu` with its modules)."""
  import vma_jax  # pylint: disable=g-import-not-at-top

  names = []
  for line in vma_jax.__doc__.splitlines():
    match = re.match(r"^  (\w+)\s{2,}", line)
    if match:
      names.append(f"vma_jax.{match.group(1)}")
      if match.group(1) == "cpu":
        names += ["vma_jax.cpu.layers", "vma_jax.cpu.convolution", "vma_jax.cpu.host"]
  return names


def _default(value) -> str:
  """A default value as written in code: `jnp.float32`, not `<class 'jax.numpy.float32'>`."""
  if inspect.isclass(value) or inspect.isfunction(value):
    return value.__qualname__
  return repr(value)


def _signature(obj) -> str:
  """The parameters, without annotations (the docstrings say what they are), and without
  the `parent` and `name` every Flax module takes."""
  try:
    parameters = inspect.signature(obj).parameters.values()
  except (TypeError, ValueError):
    return "(...)"
  parts, keyword_only = [], False
  for p in parameters:
    if inspect.isclass(obj) and p.name in ("parent", "name"):
      continue
    if p.kind is p.KEYWORD_ONLY and not keyword_only:
      parts.append("*")
      keyword_only = True
    prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
    keyword_only |= p.kind is p.VAR_POSITIONAL
    default = "" if p.default is p.empty else f"={_default(p.default)}"
    parts.append(f"{prefix}{p.name}{default}")
  return f"({', '.join(parts)})"


def _members(module):
  """Public functions and classes defined in `module`, in source order."""
  members = [(name, obj) for name, obj in vars(module).items()
             if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
             and getattr(obj, "__module__", None) == module.__name__]
  return sorted(members, key=lambda item: inspect.getsourcelines(item[1])[1])


def _doc(obj, first_paragraph: bool = False) -> str:
  doc = (inspect.getdoc(obj) or "").strip()
  return doc.split("\n\n")[0] if first_paragraph else doc


def module_section(name: str) -> str:
  module = importlib.import_module(name)
  lines = [f"## `{name}`", "", "```text", _doc(module), "```", ""]
  for member_name, obj in _members(module):
    kind = "class" if inspect.isclass(obj) else "def"
    lines += [f"### `{kind} {member_name}{_signature(obj)}`", ""]
    doc = _doc(obj, first_paragraph=True)
    if doc and not (inspect.isclass(obj) and doc.startswith(f"{member_name}(")):
      lines += ["```text", doc, "```", ""]
  return "\n".join(lines)


def render() -> str:
  return HEADER + "\n" + "\n".join(module_section(name) for name in module_names())


def main() -> int:
  from vma_jax import files  # pylint: disable=g-import-not-at-top

  text = render()
  files.write_text(OUT, text)
  print(f"wrote {OUT} ({len(text.splitlines())} lines)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
