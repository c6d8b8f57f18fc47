"""Converting a run's checkpoint between the scanned and unscanned layouts (cover_jax.checkpoint.relayout).

A run trained unscanned to step 4 is converted and continued scanned to step
6; it must follow the run that was never converted. Converting there and
back must give the original arrays bit for bit.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from cover_jax.checkpoint import relayout
from tests.helpers import REPO, assert_same_arrays, checkpoint_arrays


def _train(workdir, data_dir, steps: int, *flags):
  # A constant learning rate after warm-up: a run stopped at 4 and extended to
  # 6 follows the same schedule as one run to 6.
  cmd = [sys.executable, "-m", "cover_jax.main",
         "--config=configs/demo.py:tiny=true,datasets=motion", f"--workdir={workdir}",
         f"--config.data_dir={data_dir}", f"--config.total_steps={steps}",
         "--config.checkpoint_every=2", "--config.log_every=1", "--config.eval_every=0",
         "--config.optimizer.end_learning_rate=1e-3", *flags]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _losses(workdir) -> dict[int, float]:
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return {r["step"]: r["train/motion/loss"] for r in records if "train/motion/loss" in r}


@pytest.fixture(scope="module")
def unscanned_run(tiny_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("unscanned")
  _train(workdir, tiny_data_dir, 4)
  return workdir


def test_converted_run_continues_scanned_as_the_same_run(unscanned_run, tiny_data_dir,
                                                         tmp_path):
  scanned = tmp_path / "scanned"
  assert relayout.relayout(str(unscanned_run), str(scanned)) == (4, True)
  _train(scanned, tiny_data_dir, 6, "--config.model.scan_layers=true")
  reference = tmp_path / "reference"
  _train(reference, tiny_data_dir, 6)
  got, want = _losses(scanned), _losses(reference)
  assert sorted(got) == [5, 6]  # resumed at 4
  np.testing.assert_allclose([got[5], got[6]], [want[5], want[6]], rtol=1e-5)
  back = tmp_path / "back"
  relayout.relayout(str(scanned), str(back))
  final, expected = checkpoint_arrays(back, 6), checkpoint_arrays(reference, 6)
  before = checkpoint_arrays(unscanned_run, 4)
  assert sorted(final) == sorted(expected)
  for key in expected:
    # The scanned and unrolled steps sum in different orders, and Adam's
    # g/sqrt(v) magnifies that float noise where a gradient is near zero:
    # compare with the size of the two steps' update of the array.
    moved = float(np.max(np.abs(expected[key].astype(np.float64) - before[key])))
    np.testing.assert_allclose(final[key], expected[key], rtol=1e-4, atol=1e-6 + 0.01 * moved,
                               err_msg=key)


def test_there_and_back_is_bit_identical_and_keeps_the_meta(unscanned_run, tmp_path):
  relayout.relayout(str(unscanned_run), str(tmp_path / "s"))
  stacked = checkpoint_arrays(tmp_path / "s", 4)
  assert any("['blocks']['attn']" in k for k in stacked)  # no per-block index
  assert not any("['blocks']['0']" in k for k in stacked)
  assert relayout.relayout(str(tmp_path / "s"), str(tmp_path / "u")) == (4, False)
  assert_same_arrays(checkpoint_arrays(tmp_path / "u", 4), checkpoint_arrays(unscanned_run, 4))
  meta = json.loads((tmp_path / "u" / "checkpoints" / "4" / "meta" / "metadata").read_text())
  original = json.loads((unscanned_run / "checkpoints" / "4" / "meta" / "metadata").read_text())
  assert meta["input_position"] == original["input_position"]
  assert json.loads(meta["config"])["model"]["scan_layers"] is False


def test_refuses_an_output_that_holds_checkpoints(unscanned_run):
  with pytest.raises(relayout.RelayoutError, match="already holds checkpoints"):
    relayout.relayout(str(unscanned_run), str(unscanned_run))
  result = subprocess.run([sys.executable, "-m", "cover_jax.checkpoint.relayout",
                           f"--workdir={unscanned_run}", f"--output={unscanned_run}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and "choose a new directory" in result.stderr
