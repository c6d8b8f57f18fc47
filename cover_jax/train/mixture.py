"""Which dataset(s) each training step uses.

'sample': each step trains on one dataset, drawn by the configured sampling
          weights from a generator seeded by (seed, step) alone. The sequence
          needs no saved state: a resumed run draws the same datasets, and the
          number of batches each dataset has consumed before any step can be
          recomputed (that is how the input pipelines resume).
'all':    each step trains on one batch of every dataset; the loss is the
          weighted sum of the per-dataset losses (weights normalised to 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cover_jax.config import allowed


class DatasetMixture:
  """Deterministic per-step dataset choice from (seed, step)."""

  def __init__(self, weights: Mapping[str, float], mode: str, seed: int):
    if mode not in allowed.MIXTURES:
      raise ValueError(f"mixture mode {mode!r}: use 'sample' or 'all'")
    self.names = tuple(sorted(weights))
    probs = np.array([weights[n] for n in self.names], dtype=np.float64)
    if (probs < 0).any() or probs.sum() <= 0:
      raise ValueError(f"mixture weights {dict(weights)} must be >= 0 with a positive sum")
    self.probabilities = probs / probs.sum()
    self.mode, self.seed = mode, seed

  def datasets_at(self, step: int) -> tuple[str, ...]:
    """The dataset names the batch of `step` is made of."""
    if self.mode == "all":
      return tuple(n for n, p in zip(self.names, self.probabilities) if p > 0)
    rng = np.random.default_rng([self.seed, step])
    return (self.names[rng.choice(len(self.names), p=self.probabilities)],)

  def loss_weights(self, names: tuple[str, ...]) -> tuple[float, ...]:
    """Per-batch loss weights for a step made of `names`."""
    if self.mode == "sample":
      return (1.0,) * len(names)
    total = sum(self.probabilities[self.names.index(n)] for n in names)
    return tuple(float(self.probabilities[self.names.index(n)] / total) for n in names)

  def batches_consumed(self, step: int) -> dict[str, int]:
    """How many batches each dataset has given to steps [0, step)."""
    counts = dict.fromkeys(self.names, 0)
    for s in range(step):
      for name in self.datasets_at(s):
        counts[name] += 1
    return counts
