"""Times the parts of a training step on its own device setup: where the step's time goes.

    python benchmarks/step_parts.py --out parts.json              # the recipe: B=256 T=32 K=4
    python benchmarks/step_parts.py --batch 32 --memory 8 --out small.json

A profile of the whole step under `jax.profiler` is distorted by the kernel gradients' many
small loop iterations (docs/performance.md); this times each part as its own jitted function
instead, with the batch sharded over one CPU device per core and the allocator tunables of
vma_jax/cpu/host.py, as in `benchmarks/run.py`. Parts, forward and forward + backward (the gradient
of a sum of squares of the outputs with respect to the parameters):

  h        the address encoder on the B * (1 + T) targets and memory images (features)
  e        the embedding encoder on the B targets and the B * K sampled slots (features, skips)
  decoder  the decoder on B * K samples, skip terms included (`Decoder.decode`)

and, for each of the encoder's six convs at h's size, the forward conv, its input gradient
and its kernel gradient (`convolution.conv2d`'s, as in the step). Medians of --repeats calls
after one untimed call; GFLOP/s from the FLOPs of benchmarks/flops.py.
"""

import argparse
import json
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

# JAX starts at the first computation, in main(), after `host.use_cpu_cores`.
# pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp

from benchmarks import flops as flops_lib
from benchmarks import timing
from configs import default as default_config
from vma_jax import model as vma_model
from vma_jax import networks
from vma_jax import sharding
from vma_jax.cpu import convolution
from vma_jax.cpu import host
from vma_jax.cpu import layers as cpu_layers

# (input size, input channels, output channels, stride): the encoder's conv1 ... conv6.
LAYERS = [(26, 1, 48, 1), (26, 48, 48, 2), (13, 48, 48, 1), (13, 48, 64, 2), (7, 64, 64, 1),
          (7, 64, 64, 2)]


def _parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--memory", type=int, default=32)
  parser.add_argument("--samples", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--cpu-devices", type=int, default=None)
  parser.add_argument("--cpu-kernels", default="auto", choices=("auto", "on", "off"),
                      help="the networks' layers, as config.model.cpu_kernels")
  parser.add_argument("--out", help="also write the rows as JSON here")
  return parser.parse_args(argv)


class _Inputs:
  """Random inputs on the devices: batches sharded, parameters replicated."""

  def __init__(self, image_size: int):
    self.size = image_size
    self.replicated, self.batch = sharding.shardings(sharding.make_mesh())
    self.key = jax.random.key(0)

  def normal(self, shape):
    return jax.device_put(jax.random.normal(self.key, shape), self.batch)

  def images(self, n):
    return jax.device_put(jax.random.bernoulli(
        self.key, 0.2, (n, self.size, self.size)).astype(jnp.float32), self.batch)


def _network_parts(args, config, inputs: _Inputs) -> list[dict]:
  """h, e and the decoder, each forward and forward + backward."""
  squares = lambda tree: sum(jnp.sum(jnp.square(v)) for v in jax.tree.leaves(tree))
  rows = []

  def time_part(name, module, xs, model_flops, method=None, used=lambda outputs: outputs):
    """`used` picks the outputs the step uses: XLA drops the work of the others."""
    # Jitted: one compile, not one per layer's operation (hundreds, eagerly).
    init = jax.jit(lambda key, *xs: module.init(key, *xs, method=method))
    params = jax.device_put(init(inputs.key, *jax.tree.map(lambda v: v[:2], xs)),
                            inputs.replicated)
    loss = lambda p, *xs: squares(used(module.apply(p, *xs, method=method)))
    row = {"part": name, "rows": int(jax.tree.leaves(xs)[0].shape[0]),
           "forward_s": timing.median_s(jax.jit(loss), params, *xs, repeats=args.repeats),
           "forward_backward_s": timing.median_s(jax.jit(jax.grad(loss)), params, *xs,
                                                 repeats=args.repeats),
           "forward_gflop": model_flops / 1e9}
    rows.append(row)
    print(f"{name:>8} {row['rows']:6d} rows  forward {row['forward_s']:.3f} s "
          f"({model_flops / row['forward_s'] / 1e9:5.1f} GFLOP/s)  forward+backward "
          f"{row['forward_backward_s']:.3f} s "
          f"({3 * model_flops / row['forward_backward_s'] / 1e9:5.1f} GFLOP/s)", flush=True)

  b, t, k = args.batch, args.memory, args.samples
  h_rows, e_rows, samples = b * (1 + t), b + b * k, b * k
  layers = cpu_layers if vma_model.use_cpu_kernels(args.cpu_kernels) else networks
  time_part("h", layers.Encoder(config.model.match_dim), (inputs.images(h_rows),),
            h_rows * flops_lib.encoder_flops(out=config.model.match_dim),
            used=lambda outputs: outputs[0])  # h's features; its skips are unused
  time_part("e", layers.Encoder(config.model.embed_dim), (inputs.images(e_rows),),
            e_rows * flops_lib.encoder_flops(out=config.model.embed_dim))
  skips = networks.Skips(inputs.normal((samples, 13, 13, 48)), inputs.normal((samples, 7, 7, 64)))
  decoder = layers.Decoder(image_size=config.data.image_size)
  code_dim = config.model.latent_dim * 2  # [z, g(e(m_a))]
  time_part("decoder", decoder, (inputs.normal((samples, code_dim)), skips),
            samples * flops_lib.decoder_flops(), method=decoder.decode)
  return rows


def _conv_parts(args, inputs: _Inputs) -> list[dict]:
  """Each encoder conv at h's size: forward, input gradient, kernel gradient."""
  rows, h_rows = [], args.batch * (1 + args.memory)
  for in_size, cin, cout, stride in LAYERS:
    strides, padding = (stride, stride), ((1, 1), (1, 1))
    x = inputs.normal((h_rows, in_size, in_size, cin))
    kernel = jax.device_put(0.1 * jax.random.normal(inputs.key, (3, 3, cin, cout)),
                            inputs.replicated)
    conv = lambda x, kernel, s=strides: convolution.conv2d(x, kernel, s, padding)
    dy = inputs.normal(jax.eval_shape(conv, x, kernel).shape)
    input_grad = jax.jit(lambda x, kernel, dy, f=conv: jax.vjp(lambda v: f(v, kernel), x)[1](dy))
    kernel_grad = jax.jit(lambda x, kernel, dy, f=conv: jax.vjp(lambda v: f(x, v), kernel)[1](dy))
    gflop = 2.0 * dy.size * 9 * cin / 1e9
    row = {"part": f"conv {in_size}x{in_size}x{cin}->{cout}/s{stride}", "rows": h_rows,
           "forward_gflop": gflop,
           "forward_s": timing.median_s(jax.jit(conv), x, kernel, repeats=args.repeats),
           "input_grad_s": timing.median_s(input_grad, x, kernel, dy, repeats=args.repeats),
           "kernel_grad_s": timing.median_s(kernel_grad, x, kernel, dy, repeats=args.repeats)}
    rows.append(row)
    rate = lambda s, g=gflop: g / s
    print(f"{row['part']:>22}  {gflop:6.1f} GFLOP  forward {rate(row['forward_s']):5.1f}  "
          f"input grad {rate(row['input_grad_s']):5.1f}  kernel grad "
          f"{rate(row['kernel_grad_s']):5.1f} GFLOP/s", flush=True)
  return rows


def main(argv=None):
  args = _parse(argv)
  host.use_cpu_cores([args.batch], args.cpu_devices)
  config = default_config.get_config()
  inputs = _Inputs(config.data.image_size)
  rows = _network_parts(args, config, inputs) + _conv_parts(args, inputs)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
                 "batch": args.batch, "memory": args.memory, "samples": args.samples,
                 "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  host.reexec_with_malloc_tunables()
  main()
