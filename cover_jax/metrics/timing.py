"""Wall-clock marks of a run's phases, written to `workdir/timing.json` (benchmarks/startup.py).

Marks are seconds since the epoch (`time.time()`), so a benchmark that
started the process can subtract its own start time (imports included) and
its own end time (exit included).
"""

from __future__ import annotations

import json
import time

from etils import epath


class Timing:
  """Named marks and per-shape compile durations of one run."""

  def __init__(self):
    self.marks: dict[str, float] = {}
    self.compile_s: dict[str, float] = {}  # input shapes -> first step's seconds (compile + run)
    self.steps_per_sec: list[float] = []   # one per logging window

  def mark(self, name: str) -> None:
    self.marks.setdefault(name, time.time())

  def write(self, path) -> None:
    epath.Path(path).write_text(json.dumps({
        "marks": self.marks, "compile_s": self.compile_s, "steps_per_sec": self.steps_per_sec},
        indent=1) + "\n")
