"""Smoke runs of benchmarks/input_pipeline.py and host_overhead.py: they run (no timing)."""

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


def test_host_overhead_benchmark_times_pipeline_step_and_loop(tiny_data_dir):
  """benchmarks/host_overhead.py on the tiny demo: a row per part, one per dataset."""
  result = subprocess.run(
      [sys.executable, "benchmarks/host_overhead.py", "--steps=12",
       "--config=configs/demo.py:tiny=true", f"--config.data_dir={tiny_data_dir}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {line[:36].strip(): line[36:].split() for line in result.stdout.splitlines()[2:]}
  assert {"pipeline alone", "step alone", "loop-like"} <= set(rows)
  assert sum(name.split(" (")[0] in ("appearance", "images", "motion") for name in rows) == 3
  assert all(len(v) == 2 and float(v[0]) > 0 and float(v[1]) > 0 for v in rows.values())
