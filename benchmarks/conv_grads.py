"""Times the kernel gradient of each encoder conv: XLA's against `convolution.kernel_grad`.

    python benchmarks/conv_grads.py                 # 4,224 images: h's share of one device
    python benchmarks/conv_grads.py --images 145    # train_small's share

One JAX device; for each of the encoder's six 3x3 convs (26x26 inputs) it prints the median
time and GFLOP/s of the forward conv, of XLA's kernel gradient (the transpose of the conv in
its kernel) and of the kernel gradient as matrix products, and their largest difference. Like
the entry points it runs with the allocator tunables of vma_jax/host.py (set GLIBC_TUNABLES,
even to "", to choose otherwise): without them every call's output is faulted in page by page,
which at these sizes costs as much as the convolution.
"""

import argparse
import json
import os
import sys

import jax

jax.config.update("jax_num_cpu_devices", 1)

import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import timing  # noqa: E402  pylint: disable=g-import-not-at-top
from vma_jax.cpu import convolution  # noqa: E402  pylint: disable=g-import-not-at-top
from vma_jax.cpu import host  # noqa: E402  pylint: disable=g-import-not-at-top

# (input size, input channels, output channels, stride): the encoder's conv1 ... conv6.
LAYERS = [(26, 1, 48, 1), (26, 48, 48, 2), (13, 48, 48, 1), (13, 48, 64, 2), (7, 64, 64, 1),
          (7, 64, 64, 2)]
PADDING = ((1, 1), (1, 1))


def xla_conv(x_NxHxWxC, kernel_KhxKwxCxO, strides):
  """XLA's own convolution (what `convolution.conv2d` computes, with XLA's gradients)."""
  return jax.lax.conv_general_dilated(x_NxHxWxC, kernel_KhxKwxCxO, strides, PADDING,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--images", type=int, default=4224)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", help="also write the rows as JSON here")
  args = parser.parse_args()
  key = jax.random.key(0)
  rows = []
  for size, cin, cout, stride in LAYERS:
    strides = (stride, stride)
    x = jax.random.normal(key, (args.images, size, size, cin))
    kernel = 0.1 * jax.random.normal(key, (3, 3, cin, cout))
    conv = jax.jit(lambda x, k, s=strides: xla_conv(x, k, s))
    dy = jax.random.normal(key, conv(x, kernel).shape)
    xla_grad = jax.jit(lambda x, dy, k, s=strides: jax.linear_transpose(
        lambda k: xla_conv(x, k, s), k)(dy)[0])
    matmul_grad = jax.jit(lambda x, dy, s=strides, shape=kernel.shape: convolution.kernel_grad(
        x, dy, shape, s, PADDING))
    flops = 2.0 * dy.size * 9 * cin
    row = {"layer": f"{size}x{size}x{cin}->{cout}/s{stride}", "images": args.images,
           "gflop": flops / 1e9,
           "forward_s": timing.median_s(conv, x, kernel, repeats=args.repeats),
           "xla_kernel_grad_s": timing.median_s(xla_grad, x, dy, kernel, repeats=args.repeats),
           "matmul_kernel_grad_s": timing.median_s(matmul_grad, x, dy, repeats=args.repeats),
           "max_abs_diff": float(jnp.max(jnp.abs(xla_grad(x, dy, kernel) - matmul_grad(x, dy)))),
           "max_abs_xla": float(jnp.max(jnp.abs(xla_grad(x, dy, kernel))))}
    rows.append(row)
    rate = lambda s: flops / s / 1e9
    print(f"{row['layer']:>18}  {row['gflop']:6.2f} GFLOP  forward {rate(row['forward_s']):5.1f}"
          f"  XLA kernel grad {rate(row['xla_kernel_grad_s']):5.1f}  as matmuls "
          f"{rate(row['matmul_kernel_grad_s']):5.1f} GFLOP/s  (max |diff| "
          f"{row['max_abs_diff'] / row['max_abs_xla']:.1e} of max |XLA's|)", flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": str(jax.devices()[0]),
                 "glibc_tunables": os.environ.get("GLIBC_TUNABLES"), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  host.reexec_with_malloc_tunables()
  main()
