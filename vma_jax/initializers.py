"""Initial values of the networks' layers: PyTorch's defaults (the reference's) or Flax's.

The reference implementation builds every layer from PyTorch modules with their default
initialisation; the paper does not say, so that is the default here (`config.model.param_init`):

  "torch"  kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for
           nn.Linear, nn.Conv2d and nn.ConvTranspose2d (kaiming_uniform(a=sqrt(5)) for the
           weight). fan_in is the input size of a dense layer, Cin*k*k of a conv, and
           Cout*k*k of a transposed conv: PyTorch reads fan-in off the weight's second axis,
           which holds a transposed conv's output channels.
  "flax"   Flax's defaults: kernel ~ lecun_normal (variance 1/fan_in, fan_in the product of
           the kernel's axes but the last), bias = 0.

The learned dummy slots start at zero under either (docs/model.md, Generative model and
posterior).
"""

import functools
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vma_jax import errors

INITS = ("torch", "flax")

Initializer = Callable[..., jax.Array]


def layer_init(init: str, fan_in: int) -> tuple[Initializer, Initializer]:
  """(kernel_init, bias_init) of a layer whose PyTorch counterpart has this fan-in."""
  if init == "torch":
    uniform = functools.partial(_uniform, bound=1.0 / math.sqrt(fan_in))
    return uniform, uniform
  if init == "flax":
    return nn.initializers.lecun_normal(), nn.initializers.zeros_init()
  raise errors.ConfigError(f"unknown init {init!r}: config.model.param_init must be one of {INITS}")


def layer_kwargs(init: str, fan_in: int) -> dict[str, Initializer]:
  """`layer_init` as the keyword arguments of a Flax layer (nn.Dense, nn.Conv, ...)."""
  kernel_init, bias_init = layer_init(init, fan_in)
  return dict(kernel_init=kernel_init, bias_init=bias_init)


def conv_init(init: str, kernel_shape: tuple[int, ...], *,
              transposed: bool) -> tuple[Initializer, Initializer]:
  """`layer_init` of a conv with a KhxKwxCinxCout kernel: fan_in = Kh*Kw*Cin, or Kh*Kw*Cout
  for a layer that stands for a transposed conv (PyTorch's count)."""
  *taps, cin, cout = kernel_shape
  return layer_init(init, math.prod(taps) * (cout if transposed else cin))


def _uniform(key, shape, dtype=jnp.float32, *, bound: float) -> jax.Array:
  return jax.random.uniform(key, shape, dtype, -bound, bound)
