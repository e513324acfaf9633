"""A jitted function over many items in batches of one shape, read back as numpy arrays.

`in_batches` pads the last batch, keeps a few batches queued on the devices while the host
reads the oldest back, and logs how far it has got and how long the rest should take. The
evaluation cells (`vma_jax.cells`) and the one-shot classifiers (`vma_jax.classify`) run
through it.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from vma_jax import sharding

# Batches of items dispatched before the oldest is read back.
_BATCHES_AHEAD = 4


def in_batches(fn: Callable[[Any], Any], index_N: np.ndarray, batch_size: int, *, mesh=None,
               name: str = "", items: str = "targets", log_every_s: float = 60.0) -> Any:
  """fn(index_B) for batches of batch_size indices of index_N, concatenated: each of fn's
  output arrays (a pytree of arrays with the batch first) as a numpy array of N rows.

  The last batch is padded (with indices repeated from the start of index_N) to keep one
  compiled shape; the padding's rows are dropped. Every `log_every_s` seconds a log line
  (prefixed `name`) says how many `items` are done and how long the rest should take.

  With `mesh` (the one `fn` shards its batch over) each batch of indices goes to the devices
  as one array sharded over it, each process placing its own devices' part, as several
  processes need; without, as a numpy int32 array (one process). Every process gets all rows.
  """
  num = len(index_N)
  padded_N = np.resize(index_N, -(-num // batch_size) * batch_size).astype(np.int32)
  in_flight, batches = collections.deque(), []
  start = last_log = time.perf_counter()
  for i in range(0, len(padded_N), batch_size):
    index_B = padded_N[i:i + batch_size]
    if mesh is not None:
      index_B = sharding.shard_batch(index_B, mesh)
    in_flight.append(fn(index_B))
    # Batches queued ahead: the devices never wait for the host, which meanwhile reads the
    # oldest back (and so knows how far it has got).
    last = i + batch_size == len(padded_N)
    while len(in_flight) > _BATCHES_AHEAD or (last and in_flight):
      # The rows of other processes' devices too (on one process, a plain read-back).
      batches.append(jax.tree.map(np.asarray, multihost_utils.process_allgather(
          in_flight.popleft(), tiled=True)))
      done, now = min(len(batches) * batch_size, num), time.perf_counter()
      if now - last_log >= log_every_s and done < num:
        logging.info("%s%d/%d %s, %.0f s left", name, done, num, items,
                     (now - start) / done * (num - done))
        last_log = now
  return jax.tree.map(lambda *rows: np.concatenate(rows)[:num], *batches)
