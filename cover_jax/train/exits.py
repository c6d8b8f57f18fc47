"""What every training command shares around its runs: how it starts, how a run can end early.

`python -m cover_jax.main` and `python -m cover_jax.study` start the same way
(`start`: the terminal's story and the log capture, the persistent compilation
cache) and map the same failures to the same exit statuses (`failures`), so a
user reads the same status for the same failure. The statuses are listed in
main.py's docstring.

Every command (these two, predict, convert, export, prepare) also holds
Python's garbage collector while it imports JAX, TensorFlow
and the rest (`hold_garbage_collection`, `imports_done`): those imports leave
about 500,000 long-lived objects, none of them garbage, and each full
collection during start-up would walk them all again (about 2 s of a tiny
run's 14 s of CPU time on the 2-core CPU machine, docs/performance.md).
"""

from __future__ import annotations

import gc
import logging
import os

DATASET_EXIT_STATUS = 6  # a dataset cannot be read


def hold_garbage_collection() -> None:
  """No garbage collection until `imports_done`: call first thing in a command's `__main__`."""
  gc.disable()


def imports_done() -> None:
  """Keeps what the imports made out of every later collection, and collects again from here.

  `gc.freeze` moves every object alive now to a generation the collector
  never walks; objects made from here on are collected as usual.
  """
  held = not gc.isenabled()
  gc.freeze()
  gc.enable()
  logging.info("imports done: %d objects frozen out of garbage collection (collector held "
               "during the imports: %s)", gc.get_freeze_count(), held)


def start(header: str):
  """A training command's first steps once absl has parsed its flags; returns `jax`.

  Prints `header`, keeps TensorFlow's start-up notices off the terminal, holds
  every log record in memory until the workdir is known (metrics/run_log.py:
  an invalid config writes nothing) and turns on the compilation cache.
  """
  print(header, flush=True)
  from cover_jax.metrics import run_log  # pylint: disable=import-outside-toplevel
  run_log.tensorflow_environment()  # before TensorFlow is imported
  run_log.capture()
  import jax  # pylint: disable=import-outside-toplevel (after absl parsed flags: JAX flags settled)
  use_compilation_cache(jax)
  return jax


def use_compilation_cache(jax) -> None:
  """Keeps compiled steps across runs: a rerun, a resumed run, a study's next seed start fast.

  In ~/.cache/cover_jax/xla unless JAX_COMPILATION_CACHE_DIR says where (JAX's
  own setting; set it to an empty string to turn the cache off).
  """
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "cover_jax", "xla"))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    # Every compile of a run is worth keeping: even sub-second ones add up at start-up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


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
