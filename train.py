r"""Trains a VMA model: flags -> vma_jax.train.train_and_evaluate.

    python train.py --config=configs/quick.py --workdir=runs/quick
    python train.py --config=configs/default.py --workdir=runs/default --config.optim.lr=3e-4

Rerunning the same command resumes from the latest checkpoint in --workdir. SIGTERM or
Ctrl-C stops it after the step in flight, once that step's checkpoint is saved (exit status
128 + the signal's number: 143, 130); a second Ctrl-C stops at once. Any config field
can be overridden with --config.<field>=<value>; an unknown field is an error. See
docs/training.md.
"""

import os

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from vma_jax import checkpoints
from vma_jax import cli
from vma_jax import data
from vma_jax import distributed
from vma_jax import errors
from vma_jax.cpu import host
from vma_jax import preemption
from vma_jax import run as run_lib
from vma_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and summaries.")
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py).", lock_config=True)
flags.DEFINE_integer(
    "cpu_devices", None, "On a CPU-only host, the JAX devices to split it into (default: one "
    "per core, as many as divide every batch size); no effect on GPU or TPU.")
flags.DEFINE_bool(
    "allow_config_change", False, "Resume even though the config trains otherwise than the "
    "checkpoint's (e.g. a lowered --config.optim.lr); the change is recorded in the "
    "workdir's config_history.jsonl. Without it such a resume is refused, listing the fields.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv  # every setting is a flag (cli.run refuses anything else)
  # Before JAX starts: the batch is sharded over one CPU device per core.
  host.use_cpu_cores(train.batch_sizes(FLAGS.config), FLAGS.cpu_devices)
  # Also before JAX starts: joins the other processes of a run on several hosts, if any.
  try:
    distributed.initialize_from_flags()
  except ValueError as e:
    cli.exit_usage("train.py", str(e))
  logging.info("JAX process %d/%d, local devices: %s; GLIBC_TUNABLES=%s", jax.process_index(),
               jax.process_count(), jax.local_devices(), os.environ.get("GLIBC_TUNABLES"))
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                             allow_config_change=FLAGS.allow_config_change)
  except preemption.Stopped as e:  # SIGTERM or SIGINT: the checkpoint is saved; 128 + signal
    cli.exit_error("train.py", str(e), status=e.exit_status)
  except (checkpoints.ConfigChangedError, errors.ConfigError) as e:
    cli.exit_usage("train.py", str(e))
  except (checkpoints.CheckpointError, data.DataError, train.NonFiniteLossError,
          run_lib.WorkdirError) as e:
    cli.exit_error("train.py", str(e))


if __name__ == "__main__":
  host.reexec_with_malloc_tunables()  # before anything allocates: see vma_jax/cpu/host.py
  cli.run(main, "train.py")
