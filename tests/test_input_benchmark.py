"""Smoke run of benchmarks/input_pipeline.py (it times; this test only checks that it runs)."""

import subprocess
import sys

from tests.helpers import REPO


def test_input_pipeline_benchmark_prints_its_table():
  result = subprocess.run(
      [sys.executable, "benchmarks/input_pipeline.py", "--seconds=0.2", "--videos=4",
       "--frames=10", "--batch=2", "--eval_views=2x3"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines() if line.endswith("%")]
  assert len(rows) == 7 and rows[0].startswith("decode ceiling") and rows[0].endswith(" 100%")
  assert any(row.startswith("train pipeline") for row in rows)
  assert any(row.startswith("eval pipeline (2x3 views") for row in rows)
