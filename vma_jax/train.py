"""Training: `train_and_evaluate(config, workdir)` maximises L_K with VIMCO gradients.

Each step draws B training episodes (x, M) on device, K samples (a_k, z_k) ~ q per episode,
and takes an Adam step on

  loss = -mean_B vimco_surrogate(log w_1..K)     (value -L_K, gradient -VIMCO estimate).

Randomness comes from one key, jax.random.key(config.seed): step s uses fold_in(train_key, s),
so a resumed run draws exactly the episodes and samples of an uninterrupted one. Steps are
jitted over a Mesh of all devices, of every process (axis "data"): the batch is sharded, the
parameters and optimiser state are replicated.

The workdir (config, checkpoints, metrics.jsonl, TensorBoard files, images/ with labelled PNG
grids of few-shot generations) is held by a `vma_jax.run.Run`: locked, resumed from its newest
intact checkpoint, saved asynchronously, closed.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, NamedTuple

from absl import logging
import jax
from jax.sharding import Mesh
import numpy as np
import optax

from vma_jax import checkpoints
from vma_jax import distinct as distinct_lib
from vma_jax import episodes as episodes_lib
from vma_jax import errors
from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax import preemption
from vma_jax import run as run_lib
from vma_jax import sharding
from vma_jax import state as state_lib
from vma_jax import summaries
from vma_jax import validation as validation_lib

TrainState = state_lib.TrainState
METRICS_FILE, IMAGE_DIR = run_lib.METRICS_FILE, run_lib.IMAGE_DIR


class NonFiniteLossError(RuntimeError):
  """The loss, gradient or parameters became NaN or infinite; names the step."""


# ----------------------------------------------------------------------------------------
# State and step.


BATCH_SIZE_FIELDS = ("train.batch_size", "validation.batch_size")


def batch_sizes(config) -> list[int]:
  """The batch sizes that training shards over the devices (for `sharding.use_cpu_cores`)."""
  return [config[name] for name in BATCH_SIZE_FIELDS]


def make_train_step(config, model: vma_model.Read | None = None, mesh: Mesh | None = None):
  """The jitted `train_step(state, episodes, key) -> (state, metrics)`, state donated: an
  optimiser step on `objective.make_loss_fn`, with `objective.step_metrics`.

  Episodes are sharded along the batch over `mesh`; state, key and metrics are replicated.
  """
  model = vma_model.make_model(config) if model is None else model
  mesh = sharding.make_mesh() if mesh is None else mesh
  replicated, batch = sharding.shardings(mesh)
  loss_fn = objective.make_loss_fn(config, model)

  def train_step(state: TrainState, episodes, key):
    (loss, (address, weights)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, episodes, key)
    state = state.apply_gradients(grads=grads)
    metrics = objective.step_metrics(episodes, address, weights)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads),
                   param_norm=optax.tree.norm(state.params))
    return state, metrics

  return jax.jit(train_step, in_shardings=(replicated, batch, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def make_episode_sampler(config, mesh: Mesh):
  """Jitted `sample(data, train_key, step) -> (episodes, sample_key)` for step `step`.

  The step's key fold_in(train_key, step) is split into the episodes' key and the samples'
  key; episodes come out sharded along the batch, straight from device-resident data. Where
  it saves enough (`distinct.worthwhile`), `episodes.distinct` holds the batch's distinct
  images, for `VMA.encode` to run h once per distinct image (and, inside the same train
  step, on the rows left without one where they do not fit).
  """
  episodes_config, batch_size = config.episodes, config.train.batch_size
  if episodes_config.composition == "classes":
    sample_fn = functools.partial(
        episodes_lib.sample_train_episodes, batch_size=batch_size,
        memory_size=episodes_config.memory_size, per_class=episodes_config.per_class)
  elif episodes_config.composition == "cell":
    sample_fn = functools.partial(
        episodes_lib.sample_cell_train_episodes, batch_size=batch_size,
        max_classes=episodes_config.max_classes, memory_size=episodes_config.memory_size)
  else:
    raise errors.ConfigError(f"unknown episodes.composition {episodes_config.composition!r}; "
                             "expected 'classes' or 'cell'")

  def sample(data, train_key, step):
    episode_key, sample_key = jax.random.split(jax.random.fold_in(train_key, step))
    episodes = sample_fn(data, episode_key)
    num_rows = batch_size * (1 + episodes_config.memory_size)
    capacity = distinct_lib.capacity(num_rows, data.num_images,
                                     multiple=8 * mesh.devices.size)
    if distinct_lib.worthwhile(num_rows, capacity):
      ids_N = vma_model.stack_rows(episodes.x_index_B, episodes.memory_index_BxT)
      episodes = episodes._replace(distinct=distinct_lib.find(ids_N, capacity))
    return episodes, sample_key

  replicated, batch = sharding.shardings(mesh)
  return jax.jit(sample, in_shardings=(replicated, replicated, replicated),
                 out_shardings=(batch, replicated))


# ----------------------------------------------------------------------------------------
# The loop.


class _Setup(NamedTuple):
  """What a training run computes with: its jitted functions, data on the devices, keys."""

  init: Callable  # state.make_init_state
  sample: Callable  # make_episode_sampler
  train_step: Callable  # make_train_step
  validation: validation_lib.Validation
  train_data: episodes_lib.EpisodeData
  init_key: jax.Array
  train_key: jax.Array


def _prepare_run(config, mesh: Mesh, splits: dict | None) -> _Setup:
  """Builds the run's functions, puts the data on the devices and splits the keys."""
  with errors.refusing_config():
    for name, size in zip(BATCH_SIZE_FIELDS, batch_sizes(config)):
      sharding.check_batch_size(size, mesh, f"config.{name}")
    model = vma_model.make_model(config)
    sample, train_step = make_episode_sampler(config, mesh), make_train_step(config, model, mesh)
    if splits is None:
      from vma_jax import data  # pylint: disable=g-import-not-at-top

      splits = data.load_splits(config.data)
    # Replicated by the jitted split itself: device_put cannot place keys on other
    # processes' devices.
    init_key, train_key, valid_key, image_key = jax.jit(
        lambda: jax.random.split(jax.random.key(config.seed), 4),
        out_shardings=sharding.shardings(mesh)[0])()
    test_data = episodes_lib.device_data(splits["test"], mesh)
    return _Setup(state_lib.make_init_state(config, mesh), sample, train_step,
                  validation_lib.Validation(config, model, mesh, test_data, valid_key, image_key),
                  episodes_lib.device_data(splits["train"], mesh), init_key, train_key)


def _trace(setup: _Setup, config, mesh: Mesh) -> TrainState:
  """Traces every function of the run (a config that cannot run raises RefusedConfig before
  anything is written); returns the abstract train state, replicated over `mesh` as the one
  trained, so that the functions' first calls reuse these traces."""
  with errors.refusing_config("config.model"):
    abstract = state_lib.abstract_train_state(config, mesh, init=setup.init,
                                                key=setup.init_key)
  with errors.refusing_config("config.episodes"):
    episodes, sample_key = jax.eval_shape(setup.sample, setup.train_data, setup.train_key,
                                          np.int32(0))
  with errors.refusing_config("config.objective"):
    jax.eval_shape(setup.train_step, abstract, episodes, sample_key)
  with errors.refusing_config("config.validation"):
    setup.validation.trace(abstract.params, bound=config.train.validate_every > 0,
                           images=config.train.image_every > 0)
  return abstract


def _batches(sample, data, train_key, start_step: int, num_steps: int):
  """Yields (step, episodes, sample_key) for the steps start_step .. num_steps - 1.

  Nothing here waits for the device (whether a batch's distinct images fit is decided inside
  the train step): each batch is the sampler's, queued behind the previous step.
  """
  for step in range(start_step, num_steps):
    episodes, sample_key = sample(data, train_key, np.int32(step))
    yield step, episodes, sample_key


def _check_finite(pending: list[tuple[int, dict]], run: run_lib.Run) -> None:
  """Raises NonFiniteLossError naming the first step whose loss or state is not finite."""
  names = ("loss", "grad_norm", "param_norm")
  values = jax.device_get([[metrics[n] for n in names] for _, metrics in pending])
  for (step, _), row in zip(pending, values):
    bad = [f"{n} = {float(v)}" for n, v in zip(names, row) if not np.isfinite(v)]
    if bad:
      kept = (f"the last good checkpoint (step {run.last_checkpoint}) is kept in "
              f"{checkpoints.checkpoint_dir(run.workdir)}" if run.last_checkpoint is not None
              else "no checkpoint was written")
      raise NonFiniteLossError(
          f"non-finite training state at step {step} ({', '.join(bad)}); training stopped "
          f"and {kept}. Lower config.optim.lr or set config.optim.grad_clip_norm > 0; "
          "rerunning in the same workdir resumes from the last checkpoint.")


def _train_loop(setup: _Setup, state: TrainState, start_step: int, config,
                run: run_lib.Run) -> TrainState:
  """Steps start_step .. num_steps, with logging, checkpoints, validation and images at the
  periods of config.train; the host reads the device only at those.

  On SIGTERM or SIGINT (`preemption.StopRequest`) the step in flight finishes, its checkpoint
  is saved and `preemption.Stopped` is raised.
  """
  train_config = config.train
  num_steps = train_config.num_steps
  pending: list[tuple[int, dict]] = []  # per-step metrics (on device) since the last log
  log_time, log_step, bar = time.monotonic(), start_step, None

  def every(period, step, at_end=True):
    if period <= 0:
      return at_end and step == num_steps
    return step % period == 0 or step == num_steps

  def log(step):
    nonlocal pending, log_time, log_step
    _check_finite(pending, run)
    now = time.monotonic()
    # Averaged on the host: a jnp.stack here would compile once per number of pending steps.
    values = jax.device_get([metrics for _, metrics in pending])
    run.scalars(step, summaries.log_train_means(values, step, num_steps, now - log_time,
                                                step - log_step))
    pending, log_time, log_step = [], now, step

  def save(step):
    _check_finite(pending, run)  # a non-finite state is never saved
    run.save(step, state.params, state.opt_state)

  with preemption.StopRequest() as stop:
    try:
      for step, episodes, sample_key in _batches(setup.sample, setup.train_data,
                                                 setup.train_key, start_step, num_steps):
        state, metrics = setup.train_step(state, episodes, sample_key)
        done = step + 1
        pending.append((done, metrics))
        if bar is None:  # the step is compiled (at its first call); rates count from here
          bar, log_time = summaries.progress_bar(num_steps, done), time.monotonic()
        else:
          bar.update(1)
        if every(train_config.log_every, done):
          log(done)
        if every(train_config.checkpoint_every, done):
          save(done)
        if every(train_config.validate_every, done, at_end=False):
          setup.validation.write_bound(state.params, run, done)
        if every(train_config.image_every, done, at_end=False):
          setup.validation.write_images(state.params, run, done)
        if done < num_steps and stop.requested(done):
          if pending:  # the metrics since the last log line, so that none are lost
            log(done)
          if run.last_checkpoint != done:
            save(done)
          run.wait()
          raise stop.stopped(done, num_steps, checkpoints.checkpoint_dir(run.workdir))
      run.wait()
    finally:
      if bar is not None:
        bar.close()
  return state


def train_and_evaluate(config, workdir: str, *, splits: dict | None = None,
                       allow_config_change: bool = False) -> TrainState:
  """Trains (or resumes) the run of `config` in `workdir`; returns the final state.

  The workdir is checked writable, and locked, before any data is loaded or anything
  compiled (`vma_jax.run.Run`); nothing is written to it before every jitted function of the
  run has been traced with this config (one that cannot run raises errors.RefusedConfig) and, on
  resuming, the checkpoint's revision and config have been checked (CheckpointError). Damaged
  checkpoints are skipped for the newest intact one. On SIGTERM or SIGINT it saves the
  checkpoint of the step in flight and raises `preemption.Stopped`: the same call resumes
  from there, bit-identically.

  Args:
    config: an experiment config (see configs/default.py).
    workdir: where the config, checkpoints, metrics and images go; rerunning with the same
      workdir resumes from its latest checkpoint.
    splits: {"train": ..., "test": ...} Omniglot-like splits; by default
      `vma_jax.data.load_splits(config.data)`.
    allow_config_change: resume even if the config trains otherwise than the checkpoint's
      (fields outside `checkpoints.FREE_FIELDS`, e.g. a lowered learning rate); the change is
      recorded in workdir/config_history.jsonl. Without it, such a resume raises
      ConfigChangedError.
  """
  with run_lib.Run(workdir, config, allow_config_change=allow_config_change) as run:
    mesh = sharding.make_mesh()
    setup = _prepare_run(config, mesh, splits)
    abstract = _trace(setup, config, mesh)
    targets = {"params": abstract.params, "opt_state": abstract.opt_state}
    restored = run.restore(
        targets, check=functools.partial(state_lib.check_optimizer, config, abstract))
    if restored is None:  # the fresh parameters are computed only here
      fresh = setup.init(setup.init_key)
      items, start_step = dict(step=fresh.step, params=fresh.params, opt_state=fresh.opt_state), 0
    else:
      items = dict(step=sharding.replicate(np.int32(restored.step), mesh), **restored.items)
      start_step = restored.step
    # Into the traced state (its optimiser, a static field): the step's first call reuses the
    # trace of _trace.
    state = abstract.replace(**items)
    logging.info("Training %d steps from step %d on %d device(s) of %d process(es); "
                 "workdir %s", config.train.num_steps, start_step, mesh.devices.size,
                 jax.process_count(), run.workdir)
    return _train_loop(setup, state, start_step, config, run)
