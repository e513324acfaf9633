"""Checks that a change to the networks keeps the same function: params, log-weights, gradients.

    python benchmarks/check_equal.py --save ref.npz     # with the code before the change
    python benchmarks/check_equal.py --compare ref.npz  # with the code after it
    python benchmarks/check_equal.py --compare ref.npz --cpu_kernels=off  # the stock layers

On random binary episodes (two sizes, one with T = 0) it records the parameter tree (names,
shapes, initial values), the log-weights of explicit sample keys, the decoder logits, and the
gradient of the VIMCO loss with respect to every parameter; `--compare` reports the largest
differences, whether every array is bitwise equal (and which are not), and fails beyond
float32 rounding (relative 3e-4 of each array's scale: the dummies' gradient, a sum through
both encoders and the decoder, moves by 1.2e-4 between the stock and the CPU layers, each
within 3e-5 of a float64 computation of it).
"""

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default as default_config  # pylint: disable=g-import-not-at-top
from vma_jax import model as vma_model
from vma_jax import objective

CASES = {"b3_t5_k4": (3, 5, 4), "b2_t0_k3": (2, 0, 3), "b2_t2_k6": (2, 2, 6)}


def _arrays(batch, memory, samples, seed=0, cpu_kernels="auto"):
  config = default_config.get_config()
  config.model.cpu_kernels = cpu_kernels
  vma = vma_model.make_model(config)
  size = config.data.image_size
  key = jax.random.key(seed)
  kx, km, kp, ks = jax.random.split(key, 4)
  x = jax.random.bernoulli(kx, 0.3, (batch, size, size)).astype(jnp.float32)
  mem = jax.random.bernoulli(km, 0.3, (batch, memory, size, size)).astype(jnp.float32)
  keys = vma_model.sample_keys(jax.random.split(ks, batch), 0, samples)
  params = vma.init(kp, x, mem, keys)
  # Non-zero dummies and biases, so that every path carries signal.
  params = jax.tree.map(
      lambda p: p + 0.05 * jax.random.normal(jax.random.fold_in(kp, p.size), p.shape), params)
  lw = vma.apply(params, x, mem, keys)

  def loss(params):
    out = vma.apply(params, x, mem, keys)
    return -jnp.mean(objective.vimco_surrogate(out.log_w_BxK, out.log_q_a_BxK))

  grads = jax.grad(loss)(params)
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    out["param/" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
    out["grad/" + jax.tree_util.keystr(path)] = np.asarray(leaf)
  for name in ("log_w_BxK", "log_q_a_BxK", "log_px_BxK", "kl_z_BxK", "a_BxK", "logits_BxKxHxW"):
    out["lw/" + name] = np.asarray(getattr(lw, name))
  return out


def main():
  parser = argparse.ArgumentParser()
  group = parser.add_mutually_exclusive_group(required=True)
  group.add_argument("--save")
  group.add_argument("--compare")
  parser.add_argument("--cpu_kernels", default="auto", choices=vma_model.CPU_KERNELS,
                      help="config.model.cpu_kernels of this run: compare the two paths")
  args = parser.parse_args()
  current = {}
  for case, sizes in CASES.items():
    for k, v in _arrays(*sizes, cpu_kernels=args.cpu_kernels).items():
      current[f"{case}/{k}"] = v
  if args.save:
    np.savez(args.save, **current)
    print(f"saved {len(current)} arrays to {args.save}")
    return
  ref = dict(np.load(args.compare))
  ok = set(ref) == set(current)
  if not ok:
    print("different keys:", sorted(set(ref) ^ set(current)))
  worst = []
  for k in sorted(set(ref) & set(current)):
    a, b = ref[k], current[k]
    if a.shape != b.shape:
      print(f"shape differs: {k} {a.shape} vs {b.shape}")
      ok = False
      continue
    scale = max(float(np.max(np.abs(a))), 1e-6) if a.size else 1.0
    err = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
    worst.append((err / scale, err, k))
    if err > 3e-4 * scale:
      ok = False
  worst.sort(reverse=True)
  for rel, err, k in worst[:8]:
    print(f"  max |diff| {err:.3e} (relative {rel:.1e})  {k}")
  params_equal = all(np.array_equal(ref[k], current[k]) for k in ref if "/param/" in k)
  print(f"parameters (names, shapes, initial values) identical: {params_equal}")
  shared = sorted(set(ref) & set(current))
  differ = [k for k in shared
            if ref[k].shape != current[k].shape or ref[k].tobytes() != current[k].tobytes()]
  print(f"bitwise equal: {len(shared) - len(differ)} of {len(ref)} arrays"
        + (" (all)" if not differ and set(ref) == set(current) else ""))
  for k in differ[:8]:
    print(f"  not bitwise equal: {k}")
  print("EQUAL up to float32 rounding" if ok and params_equal else "DIFFERENT")
  sys.exit(0 if ok and params_equal else 1)


if __name__ == "__main__":
  main()
