"""Per-dataset running means of the train metrics the host fetches, with the NaN check."""

from __future__ import annotations

import collections

import jax
import numpy as np

from cover_jax.train import nonfinite


class TrainMetrics:
  """Sums of fetched per-batch loss and top-1 per dataset, emptied by each `summary()`.

  Every fetched step goes through the non-finite monitor first (nonfinite.py),
  which raises under the 'stop' policy and drops the step under 'skip'.
  """

  def __init__(self, monitor: nonfinite.NonFiniteMonitor, last_top1: dict | None = None):
    self.reset()
    self.nonfinite = monitor
    # Dataset -> train top-1 of the last logging window (saved with checkpoints,
    # so a finished run's table keeps its train column).
    self.last_top1: dict[str, float] = dict(last_top1 or {})

  def reset(self):
    self.sums = collections.defaultdict(lambda: np.zeros(3))  # loss, top1, count
    self.extra = collections.defaultdict(list)

  def add(self, step: int, names, metrics) -> None:
    metrics = jax.device_get(metrics)
    if not self.nonfinite.check(step, names, metrics):  # raises unless the policy skips
      return
    for name, loss, top1 in zip(names, metrics["batch_loss"], metrics["batch_top1"]):
      self.sums[name] += (loss, top1, 1)
    self.extra["grad_norm"].append(metrics["grad_norm"])
    self.extra["learning_rate"].append(metrics["learning_rate"])

  def summary(self) -> dict[str, float]:
    out = {}
    for name, (loss, top1, count) in sorted(self.sums.items()):
      out[f"train/{name}/loss"] = loss / count
      out[f"train/{name}/top1"] = top1 / count
      self.last_top1[name] = float(top1 / count)
    for key, values in self.extra.items():
      out[f"train/{key}"] = float(np.mean(values))
    if self.nonfinite.skipped_total:
      out["train/nonfinite_skipped_steps"] = float(self.nonfinite.skipped_total)
    self.reset()
    return out
