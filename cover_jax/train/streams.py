"""Each dataset's training batches for this process, continuing where a resumed run stopped.

A dataset's global batch is a fixed number of shard batches (input/shards.py);
this process reads the shards it owns and joins them. Where each shard's
stream continues comes from the checkpoint's meta (`stream_positions`: the next
record of each shard's shuffled stream, skipped bad records included), else
from the batches each dataset consumed (`input_position`, or recomputed from
the mixture's choices for checkpoints without it). The pipelines restart there
by a deterministic skip, not by tf.data iterator checkpointing: the position is
a few integers identical on every host, where iterator checkpoints would hold
every host's shuffle buffer of decoded examples.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.experimental import multihost_utils

from cover_jax.input import pipeline, shards
from cover_jax.train import mixture as mixture_lib


class TrainStreams:
  """This process's batch iterators per dataset, with their positions and skip counts."""

  def __init__(self, specs: dict, config, mixture: mixture_lib.DatasetMixture, start_step: int,
               resumed_meta: dict | None):
    self.specs, self.config = specs, config
    self.num_shards = shards.resolve_num_shards(config.input.shards, jax.process_count())
    self.positions = _batches_consumed(specs, mixture, start_step, resumed_meta)
    self.counters: dict[str, dict[int, pipeline.SkipCounter]] = {}
    saved = (resumed_meta or {}).get("stream_positions") or {}
    owned = shards.owned_shards(self.num_shards, jax.process_index(), jax.process_count())
    self.iterators = {name: shards.concatenated(self._reader(spec, saved.get(name)), owned)
                      for name, spec in specs.items()}

  def _reader(self, spec, saved_positions):
    def read(shard):
      start = (int(saved_positions[shard])
               if saved_positions and len(saved_positions) == self.num_shards
               else self.positions[spec.name] * (spec.config.batch_size // self.num_shards))
      batches = pipeline.train_dataset(
          spec, global_seed=self.config.seed, shard_index=shard, num_shards=self.num_shards,
          start_position=start).as_numpy_iterator()
      counter = pipeline.SkipCounter(spec.name, batches, start)
      self.counters.setdefault(spec.name, {})[shard] = counter
      return counter
    return read

  def next_batch(self, name: str) -> dict:
    """The next host batch of `name` (this process's share), counted as consumed."""
    self.positions[name] += 1
    return next(self.iterators[name])

  def stream_positions(self) -> dict[str, list[int]]:
    """Each dataset's next stream position per input shard (a collective: all processes call it)."""
    return {name: [int(p) for p in values]
            for name, values in self._per_shard(lambda c: c.next_position).items()}

  def skipped_records(self) -> dict[str, int]:
    """Records skipped since the run (re)started, summed over every process's shards."""
    return {name: int(values.sum()) for name, values in self._per_shard(lambda c: c.skipped).items()}

  def _per_shard(self, value_of) -> dict[str, np.ndarray]:
    """Each dataset's `value_of(counter)` per input shard, from every process.

    A collective when there are several processes (all of them call it): each
    process holds the counters of only the shards it reads.
    """
    names = sorted(self.counters)
    local = np.zeros((len(names), self.num_shards), np.int32)  # each shard is one process's
    for i, name in enumerate(names):
      for shard, counter in self.counters[name].items():
        local[i, shard] = value_of(counter)
    if jax.process_count() > 1:
      local = np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)
    return {name: local[i] for i, name in enumerate(names)}

  def close(self) -> None:
    """Releases the pipelines (their iterators) now rather than at garbage collection."""
    self.iterators.clear()
    self.counters.clear()


def _batches_consumed(specs: dict, mixture, start_step: int, resumed_meta) -> dict[str, int]:
  """Batches each dataset gave to the steps before `start_step`."""
  saved = (resumed_meta or {}).get("input_position")
  if saved is not None and set(saved) >= set(specs):
    return {name: int(saved[name]) for name in specs}
  if start_step:  # a checkpoint written before positions were saved
    logging.info("recomputing input positions from the mixture's choices of %d steps",
                 start_step)
  consumed = mixture.batches_consumed(start_step)
  return {name: consumed.get(name, 0) for name in specs}
