"""How a training run can end early, and the exit status a command gives each.

One table for every command that trains (`python -m cover_jax.main`,
`python -m cover_jax.study`), so a user reads the same status for the same
failure. The statuses are listed in main.py's docstring.
"""

from __future__ import annotations

DATASET_EXIT_STATUS = 6  # a dataset cannot be read


def failures():
  """(exception, exit status, message prefix) for each way a run can end early.

  The modules are imported here, when a command has parsed its flags, so that
  importing this one stays cheap.
  """
  from cover_jax.checkpoint import resume_checks, workdir  # pylint: disable=import-outside-toplevel
  from cover_jax.config import validation  # pylint: disable=import-outside-toplevel
  from cover_jax.input import pipeline  # pylint: disable=import-outside-toplevel
  from cover_jax.prepare import class_list  # pylint: disable=import-outside-toplevel
  from cover_jax.pretrained.weights import PretrainedError  # pylint: disable=import-outside-toplevel
  from cover_jax.train import loop, preemption  # pylint: disable=import-outside-toplevel

  return (
      (validation.ConfigError, 2, "error: "),
      (resume_checks.LayoutMismatchError, 2, "error: "),  # scanned vs unscanned workdir
      (resume_checks.ResumeConfigError, 2, "error: "),
      (PretrainedError, 2, "error: config.init_from: "),
      (loop.NoCheckpointError, 1, "error: "),
      (loop.NonFiniteLossError, 3, "error: "),
      (preemption.Preempted, preemption.EXIT_STATUS, ""),
      (workdir.WorkdirError, workdir.EXIT_STATUS, "error: "),
      (pipeline.DatasetError, DATASET_EXIT_STATUS, "error: "),
      (class_list.ClassListError, DATASET_EXIT_STATUS, "error: "),
  )


def status_and_message(error: Exception, table) -> tuple[int, str]:
  """The exit status and the line to print for an exception of `table` (`failures()`)."""
  status, prefix = next((s, p) for kind, s, p in table if isinstance(error, kind))
  return status, f"{prefix}{error}"
