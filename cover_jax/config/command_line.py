"""`--config=FILE:ARGS` and `--config.x=...` on a command line, with errors that teach.

ml_collections reads the config file and applies overrides while absl parses
the flags; what goes wrong there (a typo in a field, a value of the wrong
type, a bad argument after the colon, a missing file) surfaces as a
traceback from deep inside those libraries, with the useful line at its end.
`parse_or_exit` parses the flags and loads the config up front, and turns
those failures into one line naming the flag, the field and the fix (exit
status 2, as for any invalid config).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence

from absl import flags

EXIT_STATUS = 2  # an invalid config: nothing was built or written


def parse_or_exit(argv: Sequence[str], config_flag) -> list[str]:
  """absl's flag parsing plus loading `config_flag`'s config; exits 2 with one line on error."""
  try:
    rest = flags.FLAGS(argv)
    # Loads the file and applies the overrides; a file that failed to load
    # gives a stand-in that raises only when an attribute is read.
    config_flag.value.keys  # pylint: disable=pointless-statement
  except (flags.Error, AttributeError, KeyError, OSError, ValueError, TypeError) as e:
    print(f"error: {explain(e, argv)}", file=sys.stderr)
    sys.exit(EXIT_STATUS)
  return rest


def explain(error: Exception, argv: Sequence[str]) -> str:
  """One line: which flag, what is wrong, and how to fix it."""
  text = _message(error)
  if isinstance(error, (AttributeError, KeyError)) and "Did you mean" in text:
    return _unknown_field(text, argv)
  if "Error whilst parsing config file" in text:
    return _config_file_error(text, argv)
  if "Failed loading config file" in text or "No such file" in text:
    path = _last_config_flag(argv).split("=", 1)[-1]
    return (f"--config={path}: no such config file. Fix: give the path of a config file, e.g. "
            "--config=configs/demo.py")
  flag_error = re.match(r"flag (--[^=\s]+)=(.*?): (.*)", text, re.S)
  if flag_error:
    name, value, why = flag_error.groups()
    return (f"{name}={value}: {why.strip().splitlines()[-1]}. Fix: give {name} a value of "
            "the field's type")
  return text.strip().splitlines()[-1]


def _last_config_flag(argv: Sequence[str]) -> str:
  """The --config=... flag that counts (absl keeps the last one given)."""
  return next((a for a in reversed(list(argv)) if a.startswith("--config=")), "--config")


def _message(error: BaseException) -> str:
  """The innermost message: ml_collections wraps a KeyError('...') in an AttributeError."""
  while isinstance(error, (KeyError, AttributeError)) and error.args:
    inner = error.args[0]
    if not isinstance(inner, BaseException):
      return str(inner)
    error = inner
  return str(error)


def _unknown_field(text: str, argv: Sequence[str]) -> str:
  """'learning_rat'\\nDid you mean "learning_rate" ... -> the flag and the corrected flag."""
  missing = re.search(r"'([^']+)'", text)
  suggested = re.search(r'Did you mean "([^"]+)"', text)
  name = missing.group(1) if missing else "?"
  flag = next((a for a in argv if a.startswith("--config.") and
               re.search(rf"\.{re.escape(name)}(=|$)", a.split("=", 1)[0] + "=")), None)
  where = flag.split("=", 1)[0] if flag else f"--config...{name}"
  fix = where[:-len(name)] + suggested.group(1) if suggested and where.endswith(name) else None
  return (f"{where}: the config has no field {name!r}."
          + (f" Fix: {fix}=..., the field it is closest to" if fix else ""))


def _config_file_error(text: str, argv: Sequence[str]) -> str:
  """The exception the config file's get_config raised (its last traceback line)."""
  config = _last_config_flag(argv)
  last = [line for line in text.strip().splitlines() if line.strip()][-1]
  message = last.split(": ", 1)[1] if re.match(r"^\w+(Error|Exception): ", last) else last
  return f"{config}: {message}"
