"""Every config file loads, has the fields training and evaluation read, and overrides work."""

import pathlib
import re
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from vma_jax import model as vma_model
from vma_jax import state as state_lib


REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
CELLS = [(c, t) for c in (1, 2) for t in (1, 2, 3, 4, 5, 10, 19)]
CONFIG_FILES = sorted(p.name for p in CONFIG_DIR.glob("*.py")
                      if p.name not in ("cell.py", "__init__.py"))

REQUIRED = {
    "": ["seed"],
    "data": ["archive_dir", "data_dir", "image_size"],
    "model": ["latent_dim", "embed_dim", "match_dim", "num_dummies", "dtype"],
    "episodes": ["composition", "memory_size", "per_class", "max_classes"],
    "objective": ["num_importance", "baseline"],
    "optim": ["name", "lr", "b1", "b2", "eps", "grad_clip_norm"],
    "train": ["batch_size", "num_steps", "log_every", "checkpoint_every", "max_checkpoints",
              "validate_every", "image_every", "tensorboard"],
    "validation": ["max_classes", "memory_size", "num_targets", "num_importance", "batch_size",
                   "chunk_size"],
    "eval": ["cells", "num_importance", "num_targets", "batch_size", "chunk_size", "seed"],
}


def load(name, *overrides):
  """The config of configs/<name> as train.py parses it (locked), with overrides."""
  argv = ["prog", f"--config={CONFIG_DIR / name}", *overrides]
  flag_values = flags.FlagValues()
  # Override flags are declared from the command line, hence sys_argv.
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_every_cell_has_a_config():
  assert {f"c{c}_m{t}.py" for c, t in CELLS} <= set(CONFIG_FILES)
  assert {"default.py", "quick.py"} <= set(CONFIG_FILES)


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_loads_with_required_fields(name):
  config = load(name)
  for section, fields in REQUIRED.items():
    node = config[section] if section else config
    for field in fields:
      assert field in node, f"{name}: config.{section}.{field} is missing"
  assert config.objective.baseline in ("arithmetic", "geometric")
  assert config.episodes.composition in ("classes", "cell")
  assert config.train.batch_size > 0 and config.train.num_steps > 0
  for cell in config.eval.cells.split(","):
    c, t = (int(v) for v in cell.split(":"))
    assert c >= 1 and t >= 0
  state_lib.make_optimizer(config.optim)
  vma_model.make_model(config)
  docstring = (CONFIG_DIR / name).read_text().split('"""')[1]
  assert f"--config=configs/{name}" in docstring, f"{name}: the docstring gives no command"
  assert re.search(r"\bTime\b|minutes|hours", docstring), f"{name}: no time in the docstring"


@pytest.mark.parametrize("c,t", CELLS)
def test_cell_configs_train_and_evaluate_their_cell(c, t):
  config = load(f"c{c}_m{t}.py")
  recipe = load("default.py")
  assert config.episodes.composition == "cell"
  assert (config.episodes.max_classes, config.episodes.memory_size) == (c, t)
  assert (config.validation.max_classes, config.validation.memory_size) == (c, t)
  assert config.eval.cells == f"{c}:{t}"
  assert config.model == recipe.model and config.optim == recipe.optim
  assert config.train == recipe.train and config.objective == recipe.objective


def test_quick_is_small():
  config = load("quick.py")
  assert config.train.batch_size <= 64 and config.objective.num_importance == 4
  assert config.train.num_steps * config.train.batch_size <= 100_000


def test_overrides():
  config = load("default.py", "--config.optim.lr=3e-4", "--config.eval.cells=2:19",
                "--config.train.num_steps=7")
  assert config.optim.lr == 3e-4 and config.eval.cells == "2:19"
  assert config.train.num_steps == 7
  with pytest.raises(Exception, match="nonexistent"):
    load("default.py", "--config.optim.nonexistent=1")
  with pytest.raises(Exception):
    load("default.py", "--config.train.num_steps=many")


def test_unknown_key_is_an_error_of_train_py(tmp_path):
  result = subprocess.run(
      [sys.executable, str(REPO_ROOT / "train.py"), "--config=configs/quick.py",
       f"--workdir={tmp_path}", "--config.optim.nonexistent=1"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "nonexistent" in result.stderr
  assert not any(tmp_path.iterdir())  # nothing was started


def _command(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize("args, expected", [
    (["--config.train.num_stpes=3"],
     "train.py: --config.train.num_stpes: the config has no field 'num_stpes'; did you mean "
     "--config.train.num_steps?"),
    (["--config.train.num_steps=many"], "train.py: flag --config.train.num_steps=many:"),
    (["--config=configs/nope.py"], "train.py: "),
    (["extra"], "train.py: unexpected arguments extra: every setting is a --flag"),
])
def test_train_py_usage_errors_are_one_line_with_status_2(tmp_path, args, expected):
  argv = ["--config=configs/quick.py", f"--workdir={tmp_path / 'run'}"]
  if args[0].startswith("--config="):
    argv = argv[1:]
  result = _command(str(REPO_ROOT / "train.py"), *argv, *args)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith(expected), lines
  assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("args, expected", [
    (["--cells=1-5"], "evaluate.py: --cells=1-5: bad cell '1-5': cells are written C:T"),
    (["--num_importance=lots"], "evaluate.py: flag --num_importance=lots:"),
    (["--nosuchflag"], "evaluate.py: Unknown command line flag 'nosuchflag'"),
])
def test_evaluate_py_usage_errors_are_one_line_with_status_2(args, expected):
  result = _command(str(REPO_ROOT / "evaluate.py"), "--workdir=/nonexistent", *args)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
  assert lines[0].startswith(expected), lines
