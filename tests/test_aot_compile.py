"""benchmarks/aot_compile.py: the config's own train step, compiled ahead of time.

On TPU topologies it needs libtpu (docs/scaling.md); `--topologies=cpu` runs
the same path for the local devices, so the suite checks that the script
builds the step from the config file through `cover_jax.train.build` (the
trainer's builder) with the recipe's knobs (scan + remat + stochastic depth)
and one step holding a batch of every dataset (mixture 'all').
"""

from __future__ import annotations

import json
import subprocess
import sys

from cover_jax.parallel import sharding
from cover_jax.train import build
from tests.helpers import REPO, load_config


def test_aot_compile_compiles_the_recipes_step_of_every_dataset(tmp_path):
  out = tmp_path / "rows.jsonl"
  proc = subprocess.run(
      [sys.executable, "benchmarks/aot_compile.py", "--config=configs/cover.py:tiny=True",
       "--config.model.scan_layers=True", "--config.model.remat=full",
       "--config.model.stochastic_depth=0.1", "--topologies=cpu", f"--json={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = [json.loads(line) for line in out.read_text().splitlines()]
  assert row["datasets"] == ["in21k", "k400", "mit", "ssv2"]  # mixture 'all': one step
  assert row["per_chip_batch"] == {"in21k": 8, "k400": 8, "mit": 8, "ssv2": 8}
  assert row["state"] > 0 and row["peak"] >= row["state"]
  assert "remat=full scan_layers=True stochastic_depth=0.1, optimizer sgd" in row["config"]
  assert "per-chip batch" in proc.stdout


def test_sample_mixture_compiles_one_step_per_batch_shape():
  # The three tiny video sets share a batch shape (and so a compiled step); images differ.
  config = load_config("configs/cover.py", arg="tiny=True", mixture="sample")
  mesh = sharding.make_mesh((-1, 1, 1))
  built = build.build_step(config, mesh, sharding.LOGICAL_AXIS_RULES)
  assert build.distinct_steps(config, built) == [("in21k",), ("k400",)]
  (batch,) = build.step_batches(config, ("k400",), mesh, sharding.LOGICAL_AXIS_RULES)
  assert batch["video"].shape == (8, 2, 16, 16, 3) and batch["video"].dtype == "uint8"
