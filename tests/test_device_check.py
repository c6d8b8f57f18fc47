"""benchmarks/device_check.sh: the prepared GPU run, its dry run, and its CPU smoke run.

The smoke run takes the GPU run's path (train_step.py with --batch=auto,
memory probes, workers one after another, two attention implementations of
ours and, where torch and transformers import, HF's PyTorch TimeSformer with
eager and SDPA attention) on the tiny config in float32 on CPU. Timings are
printed, never asserted on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _device_check(*args, **env):
  return subprocess.run(["bash", "benchmarks/device_check.sh", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=420,
                        env={**os.environ, "PYTHON": sys.executable, **env})


def test_dry_run_prints_the_gpu_commands_and_runs_nothing():
  proc = _device_check("--dry-run")
  assert proc.returncode == 0, proc.stderr
  commands = [line for line in proc.stdout.splitlines() if line.startswith("+ timeout")]
  assert len(commands) == 2 and "--configs=B/16" in commands[0] and "--configs=L/16" in commands[1]
  for flag in ("--batch=auto", "--attention-impl=cudnn,xla", "--compare-torch",
               "--torch-attention=eager,sdpa", "--sequential=yes"):
    assert flag in commands[0]


def test_smoke_run_takes_the_gpu_path_on_cpu(tmp_path):
  torch_ok = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
  proc = _device_check("--smoke", OUT=str(tmp_path), TORCH_PYTHON=sys.executable)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  (summary,) = json.loads((tmp_path / "device_check_tiny.json").read_text())
  impls = {row["impl"] for row in summary["rows"]}
  assert {"cover_jax[auto]", "cover_jax[xla]"} <= impls
  assert summary["sizing"] and summary["settings"]["batch"] % 8 == 0
  if torch_ok:
    assert {"pytorch[eager]", "pytorch[sdpa]"} <= impls
  else:  # the PyTorch side needs the [bench] extra: said, not failed
    assert "PyTorch side skipped" in proc.stderr
    print("torch/transformers not installed: the PyTorch side of the smoke run was skipped")


def test_patched_sdpa_attention_is_hf_eager_attention():
  torch = pytest.importorskip("torch", reason="the PyTorch reference needs the [bench] extra")
  pytest.importorskip("transformers", reason="the PyTorch reference needs the [bench] extra")
  sys.path.insert(0, str(REPO / "benchmarks"))
  import bench_common  # pylint: disable=import-outside-toplevel
  import torch_worker  # pylint: disable=import-outside-toplevel

  config = bench_common.resolve_config("tiny")
  video = torch.randn(config.batch, config.frames, 3, config.image_size, config.image_size)
  logits = {}
  for attention in ("eager", "sdpa"):
    torch.manual_seed(0)  # the same weights for both
    model, used = torch_worker.build_model(config, torch.device("cpu"), attention)
    logits[attention] = model.eval()(pixel_values=video).logits
  assert "sdpa" in used
  torch.testing.assert_close(logits["sdpa"], logits["eager"], rtol=1e-5, atol=1e-5)
