"""vma_jax.errors: one-line messages and the chain of an exception's causes."""

from vma_jax import errors


def test_one_line_joins_lines_and_spaces_and_cuts_at_the_limit():
  assert errors.one_line("a\n  b\tc ") == "a b c"
  assert errors.one_line(ValueError("x\ny")) == "x y"
  assert errors.one_line("abcdef", limit=3) == "abc..." and errors.one_line("ab", 3) == "ab"


def test_chain_walks_causes_and_contexts_once():
  try:
    try:
      raise OSError("disk full")
    except OSError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as outer:
    error = outer
  assert [str(e) for e in errors.chain(error)] == ["save failed", "disk full"]
  looped = ValueError("loop")
  looped.__context__ = ValueError("cause")
  looped.__context__.__context__ = looped
  assert [str(e) for e in errors.chain(looped)] == ["loop", "cause"]
  assert list(errors.chain(None)) == []
  assert issubclass(errors.ConfigError, ValueError)
