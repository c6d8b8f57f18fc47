"""Input shards: every global batch is a fixed number of shard batches.

With `config.input.shards` = S, the global batch of a dataset is the
concatenation of S shard batches; shard s is the pipeline that a process
`s` of `S` would read (`pipeline.train_dataset(shard_index=s,
num_shards=S)`). Process p of P reads the S/P consecutive shards it owns and
concatenates them. So what is trained on does not depend on how many
processes read it: a run resumed on another number of hosts sees the same
batches, and a one-process run reproduces a multi-process one. S = 0 means
one shard per process (the cheapest: one pipeline per dataset per process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np


def resolve_num_shards(shards: int, process_count: int) -> int:
  """0 -> one shard per process; otherwise `shards`, which processes must divide."""
  if shards == 0:
    return process_count
  if shards < 0 or shards % process_count:
    raise ValueError(f"input.shards={shards} must be 0 or a positive multiple of the "
                     f"{process_count} process(es)")
  return shards


def owned_shards(num_shards: int, process_index: int, process_count: int) -> range:
  """The consecutive shards that process `process_index` reads."""
  per_process = num_shards // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


def concatenated(make_iterator: Callable[[int], Iterator[dict]], shards: range) -> Iterator[dict]:
  """Batches of `make_iterator(shard)` for each owned shard, joined along the batch axis."""
  iterators = [make_iterator(s) for s in shards]
  if len(iterators) == 1:
    return iterators[0]
  return (_concat(parts) for parts in zip(*iterators))


def _concat(parts: tuple[dict, ...]) -> dict:
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
