"""The train state: Adam on the model's parameters, created fresh or checked against a
checkpoint's.

`TrainState` is Flax's (step, params, tx, opt_state); `make_optimizer` builds its optax chain
from `config.optim`, `create_train_state` the fresh state, `make_init_state` and
`init_train_state` the same state replicated over a mesh, and `check_optimizer` refuses to
resume a checkpoint whose optimiser state has another structure.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
import optax
from flax.training import train_state

from vma_jax import checkpoints
from vma_jax import errors
from vma_jax import model as vma_model
from vma_jax import sharding

TrainState = train_state.TrainState


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


def make_init_state(config, mesh: Mesh):
  """The jitted `init(key) -> create_train_state(config, key)`, replicated over `mesh` as
  `train.make_train_step` takes it (so the step is compiled once, not again on its second
  call). Tracing it once serves both `abstract_train_state` and the fresh state."""
  replicated, _ = sharding.shardings(mesh)
  return jax.jit(functools.partial(create_train_state, config), out_shardings=replicated)


def init_train_state(config, key, mesh: Mesh) -> TrainState:
  """`create_train_state`, replicated over `mesh` (`make_init_state`)."""
  return make_init_state(config, mesh)(key)


def abstract_train_state(config, mesh: Mesh, init=None, key=None) -> TrainState:
  """The shapes and dtypes of `create_train_state` (nothing computed), replicated over `mesh`
  as `init_train_state` returns them: what a checkpoint is restored onto. Given this config's
  `make_init_state` and the key it will be called with (placed as then: a committed key is
  traced apart from an uncommitted one), that call reuses this trace."""
  replicated, _ = sharding.shardings(mesh)
  init = make_init_state(config, mesh) if init is None else init
  abstract = jax.eval_shape(init, jax.random.key(0) if key is None else key)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)


def check_optimizer(config, abstract: TrainState, saved_config, source: str) -> None:
  """Raises CheckpointError unless the checkpoint's optimiser state (of `saved_config`) has
  the structure of this run's (switching gradient clipping on or off changes it)."""
  saved = jax.eval_shape(make_optimizer(saved_config.optim).init, abstract.params)
  shapes = lambda tree: (jax.tree.structure(tree), [x.shape for x in jax.tree.leaves(tree)])
  if shapes(saved) != shapes(abstract.opt_state):
    fields = [d for d in checkpoints.config_differences(saved_config, config)
              if d.startswith("optim.")]
    raise checkpoints.CheckpointError(
        f"{source} holds the state (opt_state) of another optimiser "
        f"({checkpoints.describe_differences(saved_config, config, fields)}). Resume with "
        "the run's optim settings, or train this config in a new --workdir.")
