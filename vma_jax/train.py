"""Training: `train_and_evaluate(config, workdir)` maximises L_K with VIMCO gradients.

Each step draws B training episodes (x, M) on device, K samples (a_k, z_k) ~ q per episode,
and takes an Adam step on

  loss = -mean_B vimco_surrogate(log w_1..K)     (value -L_K, gradient -VIMCO estimate).

Randomness comes from one key, jax.random.key(config.seed): step s uses fold_in(train_key, s),
so a resumed run draws exactly the episodes and samples of an uninterrupted one. Steps are
jitted over a Mesh of all devices, of every process (axis "data"): the batch is sharded, the
parameters and optimiser state are replicated.

Workdir: config.json, checkpoints/ (see `vma_jax.checkpoints`), metrics.jsonl (one JSON object
per logged step), TensorBoard event files (with config.train.tensorboard, where CLU and
TensorFlow are installed: `summaries.create_writer`), images/ (labelled PNG grids of few-shot
generations, `figures.few_shot_grid`). With several processes (`vma_jax.distributed`),
process 0 writes these files and all save the checkpoints.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from typing import Any, Callable, NamedTuple

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import Mesh
import numpy as np
import optax
from flax.training import train_state

from vma_jax import cells as vma_cells
from vma_jax import checkpoints
from vma_jax import distinct as distinct_lib
from vma_jax import distributed
from vma_jax import episodes as episodes_lib
from vma_jax import errors
from vma_jax import figures
from vma_jax import model as vma_model
from vma_jax import objective
from vma_jax import preemption
from vma_jax import sharding
from vma_jax import summaries
from vma_jax import workdir as workdir_lib

TrainState = train_state.TrainState
METRICS_FILE = "metrics.jsonl"
IMAGE_DIR = "images"


class NonFiniteLossError(RuntimeError):
  """The loss, gradient or parameters became NaN or infinite; names the step."""


class Stopped(Exception):
  """Training stopped early on a signal (SIGTERM, SIGINT) after saving the checkpoint of
  `step`; running the same command again resumes from it."""

  def __init__(self, step: int, num_steps: int, signum: int, workdir: str):
    self.step, self.exit_status = step, 128 + signum
    super().__init__(
        f"stopped by {signal.Signals(signum).name} at step {step} of {num_steps}, its "
        f"checkpoint saved in {checkpoints.checkpoint_dir(workdir)}; the same command resumes "
        "from it.")


class ConfigError(errors.ConfigError):
  """The config cannot run (a setting out of range, or settings that do not fit together);
  raised before anything is written to the workdir."""


@contextlib.contextmanager
def _config_errors(settings: str = ""):
  """Re-raises the errors.ConfigError of a setting (of `settings`, the config's part being
  built or traced) that the model, episodes or objective refuse, as ConfigError. Any other
  error is a bug and keeps its traceback."""
  try:
    yield
  except ConfigError:
    raise
  except errors.ConfigError as e:
    where = f"{settings}: " if settings else ""
    raise ConfigError(f"the config cannot run: {where}{e}. Change the setting "
                      "(--config.<field>=<value>) and start again; nothing was written to the "
                      "workdir.") from e


# ----------------------------------------------------------------------------------------
# State and step.


BATCH_SIZE_FIELDS = ("train.batch_size", "validation.batch_size")


def batch_sizes(config) -> list[int]:
  """The batch sizes that training shards over the devices (for `sharding.use_cpu_cores`)."""
  return [config[name] for name in BATCH_SIZE_FIELDS]


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """Adam (lr, b1, b2, eps), after global-norm clipping when grad_clip_norm > 0."""
  if optim_config.name != "adam":
    raise errors.ConfigError(f"unknown optimiser {optim_config.name!r} (config.optim.name); "
                             "expected 'adam'")
  tx = optax.adam(optim_config.lr, b1=optim_config.b1, b2=optim_config.b2,
                  eps=optim_config.eps)
  if optim_config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), tx)
  return tx


def create_train_state(config, key) -> TrainState:
  """Fresh parameters of `make_model(config)` and the optimiser of `config.optim`."""
  model = vma_model.make_model(config)
  state = TrainState.create(apply_fn=model.apply, params=vma_model.init_params(config, key),
                            tx=make_optimizer(config.optim))
  return state.replace(step=jnp.zeros((), jnp.int32))


def init_train_state(config, key, mesh: Mesh) -> TrainState:
  """`create_train_state`, replicated over `mesh` as `make_train_step` returns it (so the
  step is compiled once, not again on its second call)."""
  replicated, _ = sharding.shardings(mesh)
  return jax.jit(functools.partial(create_train_state, config), out_shardings=replicated)(key)


def make_loss_fn(config, model: vma_model.VMA) -> Callable:
  """loss_fn(params, episodes, key) -> (loss, aux): loss = -mean_B vimco_surrogate."""
  num_importance = config.objective.num_importance
  baseline = config.objective.baseline

  def loss_fn(params, episodes, key):
    x_BxHxW, memory_BxTxHxW = episodes.x_BxHxW, episodes.memory_BxTxHxW
    # One key per episode, then one per (episode, sample), as in evaluation.
    keys_BxK = vma_model.sample_keys(
        jax.random.split(key, x_BxHxW.shape[0]), 0, num_importance)
    # With K < T, e runs on the K sampled slots only, not on all T.
    embed_slots = vma_model.embed_every_slot(memory_BxTxHxW.shape[1], num_importance)
    encoding = model.apply(params, x_BxHxW, memory_BxTxHxW, embed_slots=embed_slots,
                           distinct=episodes.distinct, method="encode")
    weights = model.apply(params, x_BxHxW, encoding, keys_BxK,
                          method="log_weights")
    surrogate_B = objective.vimco_surrogate(weights.log_w_BxK, weights.log_q_a_BxK, baseline)
    return -jnp.mean(surrogate_B), (encoding.address_logits_BxS, weights)

  return loss_fn


def step_metrics(episodes, address_logits_BxS, weights: vma_model.LogWeights) -> dict:
  """Scalar summaries of one batch: the bound, its terms, where the samples address, and
  whether the batch's distinct images did not fit (h then ran on more rows, `VMA.encode`)."""
  memory_size = episodes.memory_BxTxHxW.shape[1]
  bound_B = objective.iw_bound(weights.log_w_BxK)
  # The same summary as evaluation's; XLA drops the parts not used here.
  address = vma_cells.address_summary(address_logits_BxS, episodes.memory_labels_BxT,
                                      episodes.x_label_B)
  a_BxK = weights.a_BxK
  is_dummy_BxK = a_BxK >= memory_size
  if memory_size:
    label_BxK = jnp.take_along_axis(
        episodes.memory_labels_BxT, jnp.clip(a_BxK, 0, memory_size - 1), axis=1)
    same_class_BxK = ~is_dummy_BxK & (label_BxK == episodes.x_label_B[:, None])
  else:
    same_class_BxK = jnp.zeros_like(is_dummy_BxK)
  rows = episodes.distinct
  fallback = jnp.zeros((), bool) if rows is None else ~distinct_lib.fits(rows)
  return {
      "bound": jnp.mean(bound_B),  # L_K, nats per image
      "neg_bound": -jnp.mean(bound_B),  # -L_K, the number reported (lower is better)
      "address_kl": jnp.mean(address["address_kl"]),  # KL(q(a|x,M) || p(a))
      "address_entropy": jnp.mean(address["address_entropy"]),  # H[q(a|x,M)]
      "kl_z": jnp.mean(weights.kl_z_BxK),  # log q(z|x,m_a) - log p(z|m_a), sample estimate
      "log_px": jnp.mean(weights.log_px_BxK),  # log p(x|z,m_a)
      "frac_dummy": jnp.mean(is_dummy_BxK.astype(jnp.float32)),
      "frac_same_class": jnp.mean(same_class_BxK.astype(jnp.float32)),
      # Logged as its mean: the fraction of steps whose distinct images did not fit.
      "distinct_fallback": fallback.astype(jnp.float32),
  }


def make_train_step(config, model: vma_model.VMA | None = None, mesh: Mesh | None = None):
  """The jitted `train_step(state, episodes, key) -> (state, metrics)`, state donated.

  Episodes are sharded along the batch over `mesh`; state, key and metrics are replicated.
  """
  model = vma_model.make_model(config) if model is None else model
  mesh = sharding.make_mesh() if mesh is None else mesh
  replicated, batch = sharding.shardings(mesh)
  loss_fn = make_loss_fn(config, model)

  def train_step(state: TrainState, episodes, key):
    (loss, (address_logits_BxS, weights)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, episodes, key)
    state = state.apply_gradients(grads=grads)
    metrics = step_metrics(episodes, address_logits_BxS, weights)
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
# Validation and image summaries.


def make_image_fn(config, model: vma_model.VMA, num_generated: int = 8):
  """Jitted `images(params, data, target_index_B, key) -> (memory, x, retrieved, samples)`.

  For cell episodes of config.validation: the slot argmax_a q(a|x,M) (a dummy slot shows
  its learned image), and means of p(x|z,m_a) with a ~ q(a|x,M), z ~ p(z|m_a).
  """
  v = config.validation

  def images(params, data, target_index_B, key):
    episode_key, address_key, generate_key = jax.random.split(key, 3)
    episodes = episodes_lib.sample_cell_episodes(
        data, episode_key, target_index_B, max_classes=v.max_classes,
        memory_size=v.memory_size)
    memory_BxTxHxW = episodes.memory_BxTxHxW
    encoding = model.apply(params, episodes.x_BxHxW, memory_BxTxHxW, embed_slots=False,
                           method="encode")  # only the address logits are used
    logits_BxS = encoding.address_logits_BxS
    batch = logits_BxS.shape[0]
    retrieved_BxHxW = vma_model.gather_slots(
        memory_BxTxHxW, params["params"]["dummies"], jnp.argmax(logits_BxS, axis=1)[:, None])[:, 0]
    a_BxK = jax.random.categorical(address_key, logits_BxS[:, None, :],
                                   shape=(batch, num_generated))
    samples_BxKxHxW = model.apply(params, memory_BxTxHxW, a_BxK, generate_key,
                                  method="generate")
    return memory_BxTxHxW, episodes.x_BxHxW, retrieved_BxHxW, samples_BxKxHxW

  return jax.jit(images)


# ----------------------------------------------------------------------------------------
# The loop.


class _Run(NamedTuple):
  """What a training run computes with: its jitted functions, data on the devices, keys."""

  sample: Callable  # make_episode_sampler
  train_step: Callable  # make_train_step
  validation: Callable  # cells.make_cell_fn on config.validation's cell
  images: Callable  # make_image_fn
  train_data: episodes_lib.EpisodeData
  test_data: episodes_lib.EpisodeData
  valid_targets_N: np.ndarray
  image_targets_B: np.ndarray
  init_key: jax.Array
  train_key: jax.Array
  valid_key: jax.Array
  image_key: jax.Array


class _Outputs(NamedTuple):
  """Where a run's metrics and images go (written by process 0 alone)."""

  workdir: str
  writer: Any  # a CLU MetricWriter, or None: no TensorBoard files (summaries.create_writer)
  metrics_log: summaries.MetricsLog
  is_chief: bool

  def scalars(self, step: int, scalars: dict) -> None:
    if self.writer is not None:
      self.writer.write_scalars(step, scalars)
    if self.is_chief:
      self.metrics_log.write(step, scalars)

  def figure(self, step: int, name: str, fig) -> None:
    """`fig` as images/<name>_<step>.png and, with TensorBoard files, as an image summary."""
    if self.writer is not None:
      self.writer.write_images(step, {name: figures.to_rgb(fig)[None]})
    if self.is_chief:
      figures.write_png(fig, os.path.join(self.workdir, IMAGE_DIR, f"{name}_{step:08d}.png"))

  def close(self) -> None:
    if self.writer is not None:
      self.writer.flush()


def _prepare_run(config, mesh: Mesh, splits: dict | None) -> _Run:
  """Builds the run's functions, puts the data on the devices and splits the keys."""
  with _config_errors():
    for name, size in zip(BATCH_SIZE_FIELDS, batch_sizes(config)):
      sharding.check_batch_size(size, mesh, f"config.{name}")
    model = vma_model.make_model(config)
    v = config.validation
    fns = dict(
        sample=make_episode_sampler(config, mesh),
        train_step=make_train_step(config, model, mesh),
        validation=vma_cells.make_cell_fn(
            model, vma_cells.Cell(v.max_classes, v.memory_size),
            num_importance=v.num_importance, chunk_size=v.chunk_size, mesh=mesh),
        images=make_image_fn(config, model))
  if splits is None:
    from vma_jax import data  # pylint: disable=g-import-not-at-top

    splits = data.load_splits(config.data)
  num_test = len(splits["test"].labels_N)
  replicated, _ = sharding.shardings(mesh)
  # Replicated by the jitted split itself: device_put cannot place keys on other processes'
  # devices.
  keys = jax.jit(lambda: jax.random.split(jax.random.key(config.seed), 4),
                 out_shardings=replicated)()
  return _Run(
      **fns, train_data=episodes_lib.device_data(splits["train"], mesh),
      test_data=episodes_lib.device_data(splits["test"], mesh),
      valid_targets_N=episodes_lib.target_indices(num_test, v.num_targets),
      image_targets_B=episodes_lib.target_indices(num_test, 8),
      init_key=keys[0], train_key=keys[1], valid_key=keys[2], image_key=keys[3])


def _trace(run: _Run, config) -> TrainState:
  """Traces every function of the run (a config that cannot run raises ConfigError before
  anything is written); returns the abstract train state."""
  train_config, v = config.train, config.validation
  with _config_errors("config.model"):
    abstract = jax.eval_shape(functools.partial(create_train_state, config), run.init_key)
  with _config_errors("config.episodes"):
    episodes, sample_key = jax.eval_shape(run.sample, run.train_data, run.train_key,
                                          np.int32(0))
  with _config_errors("config.objective"):
    jax.eval_shape(run.train_step, abstract, episodes, sample_key)
  with _config_errors("config.validation"):
    if train_config.validate_every > 0:
      jax.eval_shape(run.validation, abstract.params, run.test_data, run.valid_key,
                     np.resize(run.valid_targets_N, v.batch_size).astype(np.int32))
    if train_config.image_every > 0:
      jax.eval_shape(run.images, abstract.params, run.test_data, run.image_targets_B,
                     run.image_key)
  return abstract


def _abstract_items(abstract: TrainState, mesh: Mesh) -> dict:
  """The restore targets of a checkpoint: params and opt_state, replicated over `mesh`."""
  replicated, _ = sharding.shardings(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      {"params": abstract.params, "opt_state": abstract.opt_state})


def _check_continuable(saved_config, config, abstract: TrainState, source: str,
                       allow_config_change: bool) -> None:
  """Raises CheckpointError unless `config` can continue the checkpoint written with
  `saved_config`: the same model and optimiser state (always), and the same training
  (`checkpoints.check_unchanged`) unless `allow_config_change`."""
  differences = checkpoints.check_compatible(saved_config, config, source=source)
  saved_opt_state = jax.eval_shape(make_optimizer(saved_config.optim).init, abstract.params)
  shapes = lambda tree: (jax.tree.structure(tree), [x.shape for x in jax.tree.leaves(tree)])
  if shapes(saved_opt_state) != shapes(abstract.opt_state):
    detail = checkpoints.describe_differences(
        saved_config, config, [d for d in differences if d.startswith("optim.")])
    raise checkpoints.CheckpointError(
        f"{source} holds the state (opt_state) of another optimiser ({detail}). Resume with "
        "the run's optim settings, or train this config in a new --workdir.")
  if not allow_config_change:
    checkpoints.check_unchanged(saved_config, config, source=source)


def _resume(manager, abstract: TrainState, config, mesh: Mesh, *, workdir: str,
            allow_config_change: bool) -> checkpoints.Restored | None:
  """The newest intact checkpoint this config can continue (None: a fresh run).

  Damaged checkpoints newer than it are moved to workdir/damaged_checkpoints/ by process 0
  (one log line each), so that the run saves those steps again.
  """
  targets = _abstract_items(abstract, mesh)
  restored = checkpoints.restore_newest(
      manager, lambda _: targets,
      check_config=lambda saved, source: _check_continuable(
          saved, config, abstract, source, allow_config_change))
  if restored is not None and restored.damaged:
    for error in restored.damaged:
      moved = (checkpoints.move_aside(workdir, error.step) if distributed.is_chief()
               else checkpoints.DAMAGED_DIR)
      logging.warning("%s", checkpoints.describe_damage(error, manager.directory,
                                                        now=f"moved to {moved}"))
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("damaged checkpoints moved aside")
    manager.reload()
  return restored


def _initial_state(run: _Run, abstract: TrainState, restored: checkpoints.Restored | None,
                   config, mesh: Mesh, workdir: str) -> TrainState:
  """The state of the restored checkpoint (the fresh parameters are never computed), or, for
  None, a fresh state."""
  if restored is None:
    return init_train_state(config, run.init_key, mesh)
  logging.info("Resumed from step %d of %s", restored.step, checkpoints.checkpoint_dir(workdir))
  return abstract.replace(step=sharding.replicate(np.int32(restored.step), mesh),
                          **restored.items)


def _batches(sample, data, train_key, start_step: int, num_steps: int):
  """Yields (step, episodes, sample_key) for the steps start_step .. num_steps - 1.

  Nothing here waits for the device (whether a batch's distinct images fit is decided inside
  the train step): each batch is the sampler's, queued behind the previous step.
  """
  for step in range(start_step, num_steps):
    episodes, sample_key = sample(data, train_key, np.int32(step))
    yield step, episodes, sample_key


def _check_finite(pending: list[tuple[int, dict]], workdir: str, last_checkpoint) -> None:
  """Raises NonFiniteLossError naming the first step whose loss or state is not finite."""
  names = ("loss", "grad_norm", "param_norm")
  values = jax.device_get([[metrics[n] for n in names] for _, metrics in pending])
  for (step, _), row in zip(pending, values):
    bad = [f"{n} = {float(v)}" for n, v in zip(names, row) if not np.isfinite(v)]
    if bad:
      kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in "
              f"{checkpoints.checkpoint_dir(workdir)}" if last_checkpoint is not None
              else "no checkpoint was written")
      raise NonFiniteLossError(
          f"non-finite training state at step {step} ({', '.join(bad)}); training stopped "
          f"and {kept}. Lower config.optim.lr or set config.optim.grad_clip_norm > 0; "
          "rerunning in the same workdir resumes from the last checkpoint.")


def _log_train_metrics(outputs: _Outputs, pending: list[tuple[int, dict]], step: int,
                       num_steps: int, seconds: float, steps: int) -> None:
  """Writes the means of the pending steps' metrics and logs one line about them."""
  # Averaged on the host: a jnp.stack here would compile once per number of pending steps.
  values = jax.device_get([m for _, m in pending])
  means = {n: np.mean([v[n] for v in values]) for n in values[0]}
  scalars = {f"train/{n}": float(v) for n, v in means.items()}
  scalars["train/steps_per_sec"] = steps / max(seconds, 1e-9)
  outputs.scalars(step, scalars)
  logging.info("step %d/%d: loss %.2f, -L_K %.2f nats, KL(q(a)||p(a)) %.3f, "
               "same-class %.2f, dummy %.2f, %.2f steps/s", step, num_steps,
               means["loss"], means["neg_bound"], means["address_kl"],
               means["frac_same_class"], means["frac_dummy"], scalars["train/steps_per_sec"])


def _validate(run: _Run, params, config, outputs: _Outputs, step: int, mesh: Mesh) -> None:
  """-L_K of config.validation's cell on its targets, written as valid/neg_bound, and the
  means of its address summary (valid/address_kl, ...)."""
  v = config.validation
  start = time.monotonic()
  values = vma_cells.cell_values(run.validation, params, run.test_data, run.valid_key,
                                 run.valid_targets_N, v.batch_size, mesh=mesh)
  bound = float(np.mean(values.pop("bound")))
  outputs.scalars(step, {"valid/neg_bound": -bound, "valid/seconds": time.monotonic() - start,
                         **{f"valid/{k}": float(np.mean(v)) for k, v in values.items()}})
  logging.info("step %d: validation -L_%d = %.2f nats (cell C=%d, T=%d, %d targets)", step,
               v.num_importance, -bound, v.max_classes, v.memory_size,
               len(run.valid_targets_N))


def _write_images(run: _Run, params, outputs: _Outputs, step: int) -> None:
  """The few-shot grid of the image targets, as images/few_shot_<step>.png (and a summary)."""
  # Gathered by every process (the arrays may span other processes' devices).
  memory, x, retrieved, samples = multihost_utils.process_allgather(
      run.images(params, run.test_data, run.image_targets_B, run.image_key), tiled=True)
  outputs.figure(step, "few_shot", figures.few_shot_grid(memory, x, retrieved, samples))


def _train_loop(run: _Run, state: TrainState, start_step: int, config, manager,
                outputs: _Outputs, mesh: Mesh) -> TrainState:
  """Steps start_step .. num_steps, with logging, checkpoints, validation and images at the
  periods of config.train; the host reads the device only at those.

  On SIGTERM or SIGINT (`preemption.StopRequest`) the step in flight finishes, its checkpoint
  is saved and Stopped is raised. A write that fails (a full disk) ends the run with a
  WorkdirError of one line; the last checkpoint that was completely written stays as it was.
  """
  train_config = config.train
  num_steps = train_config.num_steps
  pending: list[tuple[int, dict]] = []  # per-step metrics (on device) since the last log
  saved = manager.latest_step()  # the newest checkpoint completely written
  saving = None  # the step of a save that may still be in flight
  log_time, log_step, bar = time.monotonic(), start_step, None
  workdir = outputs.workdir

  def every(period, step, at_end=True):
    if period <= 0:
      return at_end and step == num_steps
    return step % period == 0 or step == num_steps

  def failed(error, what, step):
    return workdir_lib.WorkdirError(workdir_lib.write_failure(
        error, what=what, step=step, workdir=workdir, last_checkpoint=saved))

  def finish_save():
    nonlocal saved, saving
    if saving is not None:
      try:
        manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        raise failed(e, "the checkpoint", saving) from e
      saved, saving = saving, None

  def log(step):
    nonlocal pending, log_time, log_step
    _check_finite(pending, workdir, saving or saved)
    now = time.monotonic()
    _log_train_metrics(outputs, pending, step, num_steps, now - log_time, step - log_step)
    pending, log_time, log_step = [], now, step

  def save(step):
    nonlocal saving
    _check_finite(pending, workdir, saving or saved)
    finish_save()
    try:
      checkpoints.save(manager, step, state.params, state.opt_state, config)
    except Exception as e:  # pylint: disable=broad-except
      raise failed(e, "the checkpoint", step) from e
    saving = step

  with preemption.StopRequest() as stop:
    try:
      for step, episodes, sample_key in _batches(run.sample, run.train_data, run.train_key,
                                                 start_step, num_steps):
        state, metrics = run.train_step(state, episodes, sample_key)
        done = step + 1
        pending.append((done, metrics))
        if bar is None:  # the step is compiled (at its first call); rates count from here
          bar, log_time = summaries.progress_bar(num_steps, done), time.monotonic()
        else:
          bar.update(1)
        try:
          if every(train_config.log_every, done):
            log(done)
          if every(train_config.checkpoint_every, done):
            save(done)
          if every(train_config.validate_every, done, at_end=False):
            _validate(run, state.params, config, outputs, done, mesh)
          if every(train_config.image_every, done, at_end=False):
            _write_images(run, state.params, outputs, done)
        except OSError as e:
          raise failed(e, "the run's metrics and images", done) from e
        if done < num_steps and stop.requested(done):
          if pending:  # the metrics since the last log line, so that none are lost
            log(done)
          if saving != done:
            save(done)
          finish_save()
          raise Stopped(done, num_steps, stop.signal, workdir)
      finish_save()
    finally:
      if bar is not None:
        bar.close()
  return state


def train_and_evaluate(config, workdir: str, *, splits: dict | None = None,
                       allow_config_change: bool = False) -> TrainState:
  """Trains (or resumes) the run of `config` in `workdir`; returns the final state.

  The workdir is checked writable, and locked (`vma_jax.workdir`), before any data is loaded
  or anything compiled; nothing is written to it before every jitted function of the run has
  been traced with this config (one that cannot run raises ConfigError) and, on resuming, the
  checkpoint's revision and config have been checked (CheckpointError). Damaged checkpoints
  are skipped for the newest intact one (`checkpoints.restore_newest`).

  On SIGTERM or SIGINT it saves the checkpoint of the step in flight and raises Stopped
  (`preemption`): the same call resumes from there, bit-identically.

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
  workdir = os.path.abspath(workdir)
  # Process 0 alone writes config.json, metrics.jsonl, summaries and images, and holds the
  # lock; every process saves and restores the checkpoints (Orbax writes each array once).
  is_chief = distributed.is_chief()
  lock = workdir_lib.WorkdirLock(workdir)

  def check_and_lock_if_there():  # before any data loads or compiles
    workdir_lib.check_writable(workdir)
    if os.path.isdir(workdir):
      lock.acquire()

  try:
    _on_chief(check_and_lock_if_there, workdir)
    mesh = sharding.make_mesh()
    run = _prepare_run(config, mesh, splits)
    abstract = _trace(run, config)
    _on_chief(lock.acquire, workdir)  # a new workdir is made (and locked) only now
    manager = checkpoints.make_manager(workdir, max_to_keep=config.train.max_checkpoints)
    try:
      restored = _resume(manager, abstract, config, mesh, workdir=workdir,
                         allow_config_change=allow_config_change)
      writer = summaries.create_writer(workdir, tensorboard=config.train.tensorboard,
                                       just_logging=not is_chief)
      outputs = _Outputs(workdir, writer,
                         summaries.MetricsLog(os.path.join(workdir, METRICS_FILE)), is_chief)
      state = _initial_state(run, abstract, restored, config, mesh, workdir)
      if restored is None and writer is not None:
        writer.write_hparams(_flatten(checkpoints.to_dict(config)))
      # Only once the checkpoint has restored: a config it cannot continue leaves no trace.
      _save_config(workdir, config, is_chief, restored)
      start_step = 0 if restored is None else restored.step
      logging.info("Training %d steps from step %d on %d device(s) of %d process(es); "
                   "workdir %s", config.train.num_steps, start_step, mesh.devices.size,
                   jax.process_count(), workdir)
      try:
        return _train_loop(run, state, start_step, config, manager, outputs, mesh)
      finally:
        outputs.close()
    finally:
      _close(manager)
  finally:
    lock.release()


def _on_chief(action: Callable[[], None], workdir: str) -> None:
  """Runs `action` (a check or the lock of `workdir`) on process 0 alone; if it raises
  WorkdirError, every process stops: process 0 with that error, the others saying why."""
  error = None
  if distributed.is_chief():
    try:
      action()
    except workdir_lib.WorkdirError as e:
      error = e
  if jax.process_count() > 1:
    if multihost_utils.broadcast_one_to_all(np.int32(error is not None)) and error is None:
      raise workdir_lib.WorkdirError(
          f"process 0 cannot use {workdir} (its log says why); this process stops too.")
  if error is not None:
    raise error


def _close(manager) -> None:
  """Waits for a save in flight and closes the manager; a failure here (already reported by
  the loop, or of a run that stopped for another reason) is logged, not raised."""
  try:
    manager.wait_until_finished()
    manager.close()
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("The last checkpoint could not be completed: %s",
                    errors.one_line(e)[:300])


def _save_config(workdir: str, config, is_chief: bool,
                 restored: checkpoints.Restored | None) -> None:
  """`checkpoints.save_config` by process 0, after every process has checked that the
  workdir's config.json takes `config` (so that all stop together where it does not), and the
  fields it changes from the resumed checkpoint's config in config_history.jsonl."""
  path = os.path.join(workdir, checkpoints.CONFIG_FILE)
  if jax.process_count() > 1:
    if os.path.exists(path):
      checkpoints.check_compatible(checkpoints.load_config(workdir), config, source=path)
    multihost_utils.sync_global_devices("config.json checked")  # before process 0 replaces it
  if is_chief:
    checkpoints.save_config(workdir, config)
    if restored is not None:
      record = checkpoints.record_config_change(workdir, restored.step, restored.config,
                                                config)
      if record:
        logging.warning("Resuming step %d with a changed config (recorded in %s): %s",
                        restored.step, checkpoints.CONFIG_HISTORY_FILE,
                        checkpoints.describe_differences(restored.config, config,
                                                         list(record["changed"])))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat

