"""The commands' mistakes in one line: a usage error prints `<program>: <what to do>` and exits
with status 2 (the shell's convention), with no traceback.

`run(main, program)` is `absl.app.run` with a flag parser that turns every flag a command cannot
parse (an unknown flag, a value of the wrong type, a config file that does not load, an
override of a config field that does not exist, with the field it probably meant) into such
a line; `exit_usage` ends a command the same way for a mistake found after parsing (a bad
cell), and `require_workdir` for a --workdir that is not a trained run's.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Callable, NoReturn

from absl import app
from absl import flags

from vma_jax import checkpoints
from vma_jax import errors

USAGE_ERROR = 2  # exit status of a usage error
FAILURE = 1  # exit status of a run that could not be done (a damaged workdir, a full disk)


def exit_usage(program: str, message: str) -> NoReturn:
  """Prints `program: message` (one line) to stderr and exits with status 2."""
  print(f"{program}: {errors.one_line(message)}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def exit_error(program: str, message: str, status: int = FAILURE) -> NoReturn:
  """Prints `program: message` (one line) to stderr and exits with `status` (default 1)."""
  print(f"{program}: {errors.one_line(message)}", file=sys.stderr)
  sys.exit(status)


def require_workdir(workdir: str, program: str) -> None:
  """`exit_usage` unless `workdir` is a training run's workdir or an exported model (it has
  its config.json)."""
  if not os.path.isfile(os.path.join(workdir, checkpoints.CONFIG_FILE)):
    what = "does not exist" if not os.path.exists(workdir) else "has no config.json"
    exit_usage(program, f"--workdir={workdir} {what}: it is not a training run. Give the "
               "workdir of a trained run, or train one first (python train.py "
               f"--config=configs/<name>.py --workdir={workdir}).")


def require_step(workdir: str, step: int, program: str) -> None:
  """`exit_usage` unless `workdir` holds a checkpoint at `step`, or is an exported model of
  that step (read from the files: JAX must not start before the command has chosen its
  devices)."""
  if checkpoints.is_exported(workdir):
    steps = checkpoints.restorable_steps(workdir)  # none when model.json does not read
    if steps and step not in steps:
      exit_usage(program, f"--step={step}: {workdir} is an exported model of step {steps[0]} "
                 "only; omit --step.")
    return
  steps = checkpoints.saved_steps(workdir)
  if step not in steps:
    exit_usage(program, f"--step={step}: {workdir} has no checkpoint at step {step}; its "
               f"checkpoints are at steps {', '.join(map(str, steps)) or '(none)'}.")


def _unknown_field(error: Exception, argv: list[str]) -> str:
  """What to say of an override of a config field that does not exist."""
  text = str(error)
  suggestion = re.search(r'Did you mean "([\w-]+)" instead of "([\w-]+)"', text)
  missing = re.search(r"([A-Za-z_][\w-]*)", text)
  name = suggestion.group(2) if suggestion else (missing.group(1) if missing else text)
  overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
  flag = next((o for o in overrides if o.split(".")[-1] == name or f".{name}." in o), None)
  where = f"{flag}: " if flag else ""
  hint = ""
  if suggestion and flag:
    hint = f"; did you mean {flag.rsplit(name, 1)[0]}{suggestion.group(1)}?"
  elif suggestion:
    hint = f"; did you mean {suggestion.group(1)!r}?"
  return f"{where}the config has no field {name!r}{hint}"


def _unloadable_config(error: Exception) -> str:
  """What to say of a config file that does not load (ml_collections' multi-line report)."""
  text = str(error)
  path = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)", text)
  reason = [line.strip() for line in text.splitlines() if line.strip()][-1]
  if path:
    return f"--config: cannot load {path.group(1)}: {reason}"
  return f"--config: {text}"


def parse_flags(program: str) -> Callable[[list[str]], list[str]]:
  """A flags parser for `absl.app.run` whose errors are `exit_usage` lines."""

  def parse(argv: list[str]) -> list[str]:
    try:
      remaining = flags.FLAGS(argv)
      # A config file that failed to load fails only when read: read each flag's value.
      for name in list(flags.FLAGS):
        getattr(flags.FLAGS[name].value, "keys", None)
      return remaining
    except flags.Error as e:
      exit_usage(program, f"{str(e).rstrip('.')}. See {program} --helpshort.")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of no field
      exit_usage(program, _unknown_field(e, argv))
    except (OSError, SyntaxError, ValueError, TypeError) as e:  # a config file that won't load
      exit_usage(program, _unloadable_config(e))

  return parse


def run(main: Callable[[list[str]], None], program: str) -> None:
  """`absl.app.run(main)`, flag mistakes ending in one line (exit status 2). Arguments left
  over after the flags are a usage error too."""

  def checked_main(argv: list[str]) -> None:
    if len(argv) > 1:
      exit_usage(program, f"unexpected arguments {' '.join(argv[1:])}: every setting is a "
                 f"--flag (see {program} --helpshort)")
    main(argv)

  app.run(checked_main, flags_parser=parse_flags(program))
