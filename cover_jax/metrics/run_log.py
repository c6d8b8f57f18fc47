"""Where a run's log lines go: the terminal tells the story, the workdir's log.txt has everything.

On the terminal: the story the run prints (stdout), our own warnings
(cover_jax's modules, stderr) and any library's errors. Everything else the libraries log (Orbax's per-checkpoint
INFO lines, TFDS's deprecation notes, JAX's "Unable to initialize backend
'tpu'", Python warnings) goes only to `<workdir>/log.txt`, with our lines.

Native libraries (TensorFlow's and XLA's C++ logging) write to file
descriptor 2 directly, bypassing Python. `capture` points descriptor 2 at a
file and gives Python's `sys.stderr` a duplicate of the terminal, so their
start-up notices and per-pipeline warnings land in the log too (a skipped
record's reason among them: the training log names where to look); a native
crash report (faulthandler) still goes to the terminal.

Records are held in memory (native output in a temporary file) from the
start (`capture`) until the workdir is known to be usable (`to_workdir`), so
an invalid config writes nothing into it.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import tempfile

from absl import logging as absl_logging

_BUFFER_LIMIT = 100_000  # records held before the workdir is known


def _ours(record: logging.LogRecord) -> bool:
  return f"{os.sep}cover_jax{os.sep}" in record.pathname


class _TerminalFilter(logging.Filter):
  """Our own warnings, and anyone's errors."""

  def __init__(self, errors_only: bool = False):
    super().__init__()
    self.errors_only = errors_only

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == "asyncio":  # Orbax's leftover tasks after a failed restore: nothing to do
      return False
    if record.levelno >= logging.ERROR:
      return True
    return not self.errors_only and record.levelno >= logging.WARNING and _ours(record)


class _Buffer(logging.Handler):
  """Keeps records until a file handler takes them."""

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.records: list[logging.LogRecord] = []

  def emit(self, record):
    if len(self.records) < _BUFFER_LIMIT:
      self.records.append(record)


_state = {"buffer": None, "terminal": None, "native": None}


def tensorflow_environment() -> None:
  """What a command sets before TensorFlow is first imported (commands call it; importing
  cover_jax changes nothing); a value the user set is kept.

  TF_CPP_MIN_LOG_LEVEL=1: TensorFlow's warnings and errors (a skipped record's
  reason among them), not its start-up notices. (TensorFlow also imports Keras
  when it starts, a second of every start-up; TF_USE_LEGACY_KERAS would skip
  that, but clu's metric writers import TensorBoard's hparams plugin, which
  needs tf.keras.)
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


# What TensorFlow writes natively when it loads, whatever its log level: absl's
# note that it logs before being initialised, and the oneDNN notice.
_TF_START_NOTICES = ("All log messages before absl::InitializeLog()",
                     "oneDNN custom operations are on")


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow without its start-up notices, for commands that keep descriptor 2.

  `predict` and `prepare` have no log file to send native output to (main
  and study send it to log.txt, `capture`); TensorFlow's notices are printed
  natively before its log level applies. Descriptor 2 goes to a temporary
  file while TensorFlow loads; whatever else it wrote is passed on.
  """
  if "tensorflow" in sys.modules:
    return
  tensorflow_environment()
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as native:
    os.dup2(native.fileno(), 2)
    try:
      import tensorflow  # pylint: disable=import-outside-toplevel,unused-import  # noqa: F401
    finally:  # also when the import fails: its native messages are passed on
      os.dup2(saved, 2)
      os.close(saved)
      native.seek(0)
      lines = native.read().decode(errors="replace").splitlines(keepends=True)
      sys.stderr.write("".join(line for line in lines
                               if not any(notice in line for notice in _TF_START_NOTICES)))


def capture(keep: bool = True) -> None:
  """From now on the terminal gets the story only; with `keep`, everything is kept for log.txt.

  Without `keep` (commands that have no workdir: predict, convert, export),
  library records below errors are dropped and native output stays as it is.
  """
  root = logging.getLogger()
  root.setLevel(logging.INFO)
  logging.captureWarnings(True)  # Python warnings become records (py.warnings): file only
  terminal = absl_logging.get_absl_handler()
  terminal.addFilter(_TerminalFilter())
  terminal.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
  sys.unraisablehook = _unraisable_to_log
  _state["terminal"] = terminal
  if keep:
    buffer = _Buffer()
    root.addHandler(buffer)
    _state.update(buffer=buffer, native=_native_stderr_to_file())


def _unraisable_to_log(unraisable) -> None:
  """Exceptions Python cannot raise anywhere (an event loop's callback after it closed, as
  Orbax leaves them when a damaged checkpoint fails to restore) go to the log, not the screen."""
  logging.getLogger("unraisable").info(
      "exception ignored in %r", unraisable.object,
      exc_info=(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback))


def _native_stderr_to_file():
  """Descriptor 2 -> a temporary file; Python's stderr -> the terminal. Returns the file."""
  sys.stderr.flush()
  terminal = os.fdopen(os.dup(2), "w", buffering=1)
  native = tempfile.TemporaryFile()
  os.dup2(native.fileno(), 2)
  sys.stderr = terminal
  absl_logging.get_absl_handler().python_handler.stream = terminal
  faulthandler.enable(file=terminal)
  return native


def to_workdir(workdir: str) -> str:
  """Writes everything logged so far, and from now on, to the workdir's log.txt.

  A remote workdir (gs://...) gets no log file (an object cannot be appended
  to line by line); the log goes to a local temporary file, whose path is
  returned and logged.
  """
  local = os.path.join(tempfile.gettempdir(), f"cover_jax-{os.getpid()}.log")
  path = local if "://" in str(workdir) else os.path.join(workdir, "log.txt")
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path)
  except OSError:  # an unusable workdir: the trainer's check says why (exit status 5)
    path = local
    handler = logging.FileHandler(path)
  handler.setFormatter(logging.Formatter(
      "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"))
  root = logging.getLogger()
  buffer = _state["buffer"]
  if buffer is not None:
    root.removeHandler(buffer)
    for record in buffer.records:
      handler.handle(record)
    _state["buffer"] = None
  root.addHandler(handler)
  _native_stderr_to(handler.stream)
  logging.info("log file: %s", path)
  return path


def _native_stderr_to(stream) -> None:
  """What native libraries wrote so far, then descriptor 2 itself, into the log file."""
  native = _state["native"]
  if native is None:
    return
  stream.flush()
  native.seek(0)
  stream.write(native.read().decode("utf-8", "replace"))
  stream.flush()
  os.dup2(stream.fileno(), 2)
  native.close()
  _state["native"] = None


def quiet_terminal() -> None:
  """Only errors on the terminal (processes other than 0: process 0 tells the story)."""
  terminal = _state["terminal"] or absl_logging.get_absl_handler()
  for f in list(terminal.filters):
    terminal.removeFilter(f)
  terminal.addFilter(_TerminalFilter(errors_only=True))
