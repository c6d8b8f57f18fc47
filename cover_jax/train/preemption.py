"""Preemption: on SIGTERM, finish the current step, save a checkpoint, exit (status 4).

Cloud TPU, GKE and SLURM send SIGTERM some seconds before they take a machine
away. The host loop asks `PreemptionWatch.reached(step)` at every step
boundary; when it says yes, the trainer saves a checkpoint of that step (unless
one exists) and raises `Preempted`, and `main` exits with status 4 once the
asynchronous save has finished. Running the same command again resumes.

How the processes agree on the step to save:
- With `jax.distributed` initialised (several hosts), JAX's preemption sync
  manager owns SIGTERM (its C++ notifier). `reached` calls
  `multihost_utils.reached_preemption_sync_point(step)`, which is a local check
  until a notice arrives on any host; the hosts then agree on one step (the
  largest step any host has reached, plus one) and each returns True exactly
  there, so all of them save the same step (Orbax's save is collective).
  No host sync happens on steps without a notice.
- In a single process without `jax.distributed`, a Python SIGTERM handler sets
  a flag that `reached` reads: no sync at all.

A SIGTERM before the loop starts (set-up, compilation) ends the process at once:
there is nothing new to save.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

EXIT_STATUS = 4


class Preempted(Exception):
  """The run stopped on a preemption notice after saving `step` (or having it saved)."""

  def __init__(self, step: int, directory: str):
    super().__init__(
        f"preempted (SIGTERM): stopped after step {step}; the checkpoint of step {step} is in "
        f"{directory}. Run the same command again to resume from it.")
    self.step = step


class PreemptionWatch:
  """A context manager that tells the host loop when a preemption notice arrived."""

  def __init__(self):
    self._signalled = threading.Event()
    self._previous_handler = None
    self._use_jax_sync = False

  def __enter__(self) -> PreemptionWatch:
    if jax.distributed.is_initialized():
      self._use_jax_sync = _jax_sync_available()
      if self._use_jax_sync or jax.process_count() > 1:
        if not self._use_jax_sync:
          logging.warning("JAX's preemption service is disabled "
                          "(jax_enable_preemption_service): SIGTERM will not be handled.")
        return self
    if threading.current_thread() is not threading.main_thread():
      logging.warning("not in the main thread: SIGTERM will not save a checkpoint")
      return self
    self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._signalled.set()
    logging.warning("SIGTERM received: finishing the current step, then saving a checkpoint "
                    "and exiting")

  def reached(self, step: int) -> bool:
    """Whether to save `step` (the number of steps done) and stop.

    Must be called at every step boundary with increasing `step`, on every
    process (the multi-host protocol counts on it).
    """
    if self._use_jax_sync:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled.is_set()


def _jax_sync_available() -> bool:
  """Whether jax.distributed started its preemption sync manager (it does unless
  jax_enable_preemption_service is off). JAX has no public query for it."""
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.preemption_sync_manager is not None
