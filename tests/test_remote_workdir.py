"""A gs:// workdir reaches the bucket: checkpoints, metrics, results, resume and fallback.

TPU pod workers share no disk, so a pod run's workdir is a bucket. The main
command runs against an offline stand-in for GCS (tests/fake_gcs.py: the GCS
JSON API that TensorStore and google-cloud-storage speak, and the fsspec
file system etils.epath uses), from an empty current directory, so that any
path turned local by mistake (os.path on 'gs://...' makes '<cwd>/gs:/...')
shows up there.
"""

import json
import os
import pathlib
import subprocess
import sys

from tests.helpers import REPO

WORKDIR = "gs://bucket/runs/tiny"


def _main(gcs_root, cwd, data_dir, *flags):
  cmd = [sys.executable, str(REPO / "tests" / "fake_gcs.py"), str(gcs_root), "cover_jax.main",
         f"--config={REPO / 'configs' / 'demo.py'}:tiny=true,datasets=motion",
         f"--workdir={WORKDIR}", f"--config.data_dir={data_dir}", "--config.eval_every=0",
         "--config.log_every=2", "--config.checkpoint_every=2", *flags]
  return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "PYTHONPATH": str(REPO)})


def _no_local_url_folders(*roots):
  for root in roots:
    found = [p for p in pathlib.Path(root).rglob("*") if p.name in ("gs:", "gs")]
    assert not found, f"a gs:// path was written locally: {found}"


def test_training_resuming_and_falling_back_on_a_gs_workdir(tmp_path, tiny_data_dir):
  gcs, cwd = tmp_path / "gcs", tmp_path / "cwd"
  cwd.mkdir()
  bucket_run = gcs / "bucket" / "runs" / "tiny"
  first = _main(gcs, cwd, tiny_data_dir, "--config.total_steps=4")
  assert first.returncode == 0, first.stderr[-3000:]
  for name in ("config.json", "metrics.jsonl", "results.txt", "results.json",
               "checkpoints/2/commit_success.txt", "checkpoints/4/commit_success.txt"):
    assert (bucket_run / name).exists(), name
  assert json.loads((bucket_run / "config.json").read_text())["total_steps"] == 4

  # Damage the newest checkpoint: the next run falls back to step 2 and sets step 4 aside.
  (bucket_run / "checkpoints" / "4" / "state" / "_METADATA").unlink()
  second = _main(gcs, cwd, tiny_data_dir, "--config.total_steps=6")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming from checkpoint step 2" in second.stdout
  assert [p.name for p in (bucket_run / "checkpoints").iterdir() if p.name.startswith("damaged-4-")]
  steps = [json.loads(line)["step"] for line in (bucket_run / "metrics.jsonl").read_text()
           .splitlines() if "train/motion/loss" in line]
  assert steps == [2, 4, 4, 6]  # both runs' lines, appended on the bucket
  assert json.loads((bucket_run / "results.json").read_text())["step"] == 6
  _no_local_url_folders(cwd, REPO)
