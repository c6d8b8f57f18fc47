"""What a NaN/Inf loss or gradient does to a run (`config.nonfinite`).

policy 'stop' (default): the run ends at the first step whose loss or gradient
  norm is not finite, with a message naming the step and the dataset(s) (exit
  status 3). The host checks every step's metrics before it writes a
  checkpoint, so no checkpoint holds a state reached through that step: the
  last good checkpoint stays the latest, and resuming (e.g. with a lower
  learning rate) starts from it.
policy 'skip': the jitted step itself drops the update of a non-finite step
  (parameters and optimizer state keep their values, selected on device, so
  the one-step lag of the host's metric check does not matter); the step
  counter, RNG and input still advance exactly as in a run without the bad
  step. The host counts skipped steps, logs each one, and stops the run after
  `max_consecutive_skips` in a row. Both counters are saved in the checkpoint
  meta, so a resumed run goes on counting where the interrupted one was.

`inject_at_step` (debug/testing) makes the loss of that step NaN inside the
jitted step, through a traced comparison with the step counter: no
recompilation and no test-only path on the host; every other step is
bit-identical (its loss is multiplied by exactly 1.0).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""


# --- inside the jitted step ---------------------------------------------------

def poison_factor(step, inject_at_step: int):
  """NaN at step `inject_at_step` (a traced comparison), else exactly 1.0.

  The trainer multiplies each batch's loss by it: the gradient then becomes
  NaN too, as it does in a real blow-up.
  """
  return jnp.where(step == inject_at_step, jnp.float32(jnp.nan), jnp.float32(1.0))


def all_finite(loss, grad_norm):
  """True when the step's loss and gradient norm are finite (a NaN anywhere in
  the gradient makes its norm NaN)."""
  return jnp.isfinite(loss) & jnp.isfinite(grad_norm)


def keep_if_finite(finite, new_tree, old_tree):
  """`new_tree` where `finite`, else `old_tree`, leaf by leaf (an on-device select)."""
  return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_tree, old_tree)


# --- on the host --------------------------------------------------------------

class NonFiniteMonitor:
  """Checks each step's fetched metrics and applies the policy.

  Its counters go into every checkpoint's meta (`state()`) and come back from
  the meta of the checkpoint a run resumes from.
  """

  def __init__(self, config, saved: Mapping | None = None):
    self.policy = config.policy
    self.max_consecutive = config.max_consecutive_skips
    saved = saved or {}
    self.skipped_total = int(saved.get("skipped_total", 0))
    self.consecutive = int(saved.get("consecutive", 0))

  def state(self) -> dict[str, int]:
    return {"skipped_total": self.skipped_total, "consecutive": self.consecutive}

  def check(self, step: int, names: Sequence[str], metrics: Mapping) -> bool:
    """True if `step` trained normally; False if its update was skipped.

    Raises:
      NonFiniteLossError: under 'stop', or after too many skips in a row.
    """
    bad = self._describe(step, names, metrics)
    if bad is None:
      self.consecutive = 0
      return True
    if self.policy != "skip":
      raise NonFiniteLossError(
          f"{bad}; stopping. The latest checkpoint is from before this step. Lower "
          "--config.optimizer.learning_rate or raise warmup_steps and resume, or "
          "--config.nonfinite.policy=skip to drop such steps.")
    self.skipped_total += 1
    self.consecutive += 1
    if self.consecutive >= self.max_consecutive:
      raise NonFiniteLossError(
          f"{bad}; that is {self.consecutive} skipped steps in a row "
          f"(config.nonfinite.max_consecutive_skips = {self.max_consecutive}): the run has "
          "diverged, stopping. The latest checkpoint holds no skipped update.")
    logging.warning("%s; update skipped (%d skipped step(s) so far).", bad, self.skipped_total)
    return False

  @staticmethod
  def _describe(step: int, names: Sequence[str], metrics: Mapping) -> str | None:
    """A message naming the step and the dataset(s), or None if all is finite."""
    losses = np.asarray(metrics["batch_loss"])
    bad_losses = [f"{n!r} (loss {float(v)})" for n, v in zip(names, losses) if not np.isfinite(v)]
    if bad_losses:
      return f"non-finite loss at step {step} on dataset {', '.join(bad_losses)}"
    if not np.isfinite(metrics["grad_norm"]):
      return (f"non-finite gradient (norm {float(metrics['grad_norm'])}) at step {step} "
              f"on dataset {', '.join(repr(n) for n in names)}")
    return None
