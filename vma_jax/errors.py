"""Errors and their messages: the error of a setting that cannot run, and one-line accounts.

Every layer checks the settings it is given (a size the data cannot fill, an unknown name, a
batch the devices cannot share) and raises `ConfigError`, whose message names the setting
and what it accepts; the commands end it in one line with exit status 2. Anything else
raised while a model is built or traced is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib


class ConfigError(ValueError):
  """A setting that cannot run; the message names it and says what would."""


class RefusedConfig(ConfigError):
  """A training config refused while its run was built or traced: before anything was
  written to the workdir."""


@contextlib.contextmanager
def refusing_config(settings: str = ""):
  """Re-raises the ConfigError of a setting (of `settings`, the config's part being built or
  traced) as RefusedConfig, saying that nothing was written. Any other error is a bug and
  keeps its traceback."""
  try:
    yield
  except RefusedConfig:
    raise
  except ConfigError as e:
    where = f"{settings}: " if settings else ""
    raise RefusedConfig(f"the config cannot run: {where}{e}. Change the setting "
                        "(--config.<field>=<value>) and start again; nothing was written to "
                        "the workdir.") from e


def one_line(message, limit: int | None = None) -> str:
  """The message with its lines and runs of spaces joined by single spaces; cut to `limit`
  characters (and "...") where given."""
  text = " ".join(str(message).split())
  return text if limit is None or len(text) <= limit else text[:limit] + "..."


def chain(error: BaseException | None) -> Iterator[BaseException]:
  """`error`, then what caused it (`raise ... from`, or the error being handled), outermost
  first."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__
