"""What every launch script shares: print the commands, then run them (unless --dry-run).

A dry run prints exactly the commands a real run would execute, one per line
as a shell would take them (`shlex.join`), and runs none of them.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence


def add_dry_run(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--dry-run", action="store_true",
                      help="print the commands that would run, and run none of them")


def execute(commands: Sequence[Sequence[str]], dry_run: bool, *, stdin_texts=None) -> None:
  """Prints each command; runs it unless `dry_run`; stops at the first failure.

  Args:
    stdin_texts: optional per-command text fed on stdin (e.g. a batch script
      for `sbatch`); printed after its command as a here-document.
  """
  stdin_texts = stdin_texts or [None] * len(commands)
  for command, text in zip(commands, stdin_texts):
    line = shlex.join(command)
    print(line if text is None else f"{line} <<'EOF'\n{text.rstrip()}\nEOF", flush=True)
    if dry_run:
      continue
    result = subprocess.run(list(command), input=text, text=True)
    if result.returncode:
      sys.exit(f"command failed with exit status {result.returncode}: {line}")


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """(the launcher's own arguments, the ones after `--` for cover_jax.main)."""
  argv = list(argv)
  if "--" not in argv:
    return argv, []
  i = argv.index("--")
  return argv[:i], argv[i + 1:]


def main_command(config: str, workdir: str, overrides: Sequence[str] = (),
                 python: str = "python") -> list[str]:
  """The training command every launcher runs on every host."""
  return [python, "-m", "cover_jax.main", f"--config={config}", f"--workdir={workdir}",
          *overrides]
