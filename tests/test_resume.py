"""Exact resume: SIGKILL at random points and SIGTERM preemption, against an uninterrupted run.

Every run here is `python -m cover_jax.main` in a subprocess, as a user (or a
cluster scheduler) would start and kill it. The final checkpoints' arrays
(parameters, optimizer state, step) are compared bit for bit.
"""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, assert_same_arrays, checkpoint_arrays

SEED = 2
TOTAL_STEPS = 40
CHECKPOINT_EVERY = 4
_STEP_LINE = re.compile(r"^step (\d+)/(\d+)")


def _command(workdir, data_dir, *flags):
  return [sys.executable, "-m", "cover_jax.main", "--config=configs/demo.py:tiny=true",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", f"--config.seed={SEED}",
          f"--config.total_steps={TOTAL_STEPS}", f"--config.checkpoint_every={CHECKPOINT_EVERY}",
          "--config.eval_every=0", "--config.log_every=1", *flags]


class _MainJob:
  """A running main job whose progress lines are followed as they are printed."""

  def __init__(self, workdir, data_dir, *flags):
    self.stderr_path = workdir.parent / f"{workdir.name}-{time.monotonic_ns()}.stderr"
    self._stderr = open(self.stderr_path, "w")
    self.proc = subprocess.Popen(_command(workdir, data_dir, *flags), cwd=REPO, text=True,
                                 stdout=subprocess.PIPE, stderr=self._stderr)
    self.first_step = None
    self.lines = []  # stdout so far

  def wait_for_step(self, target: int) -> int:
    """Blocks until the job has printed 'step N/...' with N >= target; returns N."""
    for line in self.proc.stdout:
      self.lines.append(line)
      match = _STEP_LINE.match(line)
      if match:
        step = int(match.group(1))
        self.first_step = self.first_step or step
        if step >= target:
          return step
    self.proc.wait()
    raise AssertionError(f"job ended (status {self.proc.returncode}) before step {target}:\n"
                         + self.stderr()[-3000:])

  def finish(self, timeout: float = 300) -> int:
    self.lines.append(self.proc.stdout.read())
    status = self.proc.wait(timeout=timeout)
    self._stderr.close()
    return status

  def stdout(self) -> str:
    return "".join(self.lines)

  def stderr(self) -> str:
    if not self._stderr.closed:
      self._stderr.flush()
    return self.stderr_path.read_text()


def _assert_bit_identical(workdir, reference_workdir, context: str) -> None:
  assert_same_arrays(checkpoint_arrays(workdir, TOTAL_STEPS),
                     checkpoint_arrays(reference_workdir, TOTAL_STEPS), context)


@pytest.fixture(scope="module")
def reference(tiny_data_dir, tmp_path_factory):
  """An uninterrupted run: the result every interrupted run must reproduce exactly."""
  workdir = tmp_path_factory.mktemp("resume") / "reference"
  job = _MainJob(workdir, tiny_data_dir)
  status = job.finish()
  assert status == 0, job.stderr()[-3000:]
  return workdir


def test_sigkill_at_random_points_and_sigterm_then_resume_is_bit_identical(
    reference, tiny_data_dir, tmp_path):
  seed = int.from_bytes(os.urandom(4), "little")
  rng = random.Random(seed)
  workdir = tmp_path / "interrupted"
  # Three SIGKILLs and one SIGTERM at increasing random steps, each after a
  # random delay (0-200 ms: checkpoints are written asynchronously, so some
  # kills land in the middle of a save).
  targets = sorted(rng.sample(range(3, TOTAL_STEPS - 4), 4))
  delays = [rng.uniform(0.0, 0.2) for _ in targets]
  log = [f"seed {seed}"]
  for i, (target, delay) in enumerate(zip(targets, delays)):
    job = _MainJob(workdir, tiny_data_dir)
    reached = job.wait_for_step(target)
    time.sleep(delay)
    sig = signal.SIGTERM if i == len(targets) - 1 else signal.SIGKILL
    job.proc.send_signal(sig)
    status = job.finish()
    log.append(f"{sig.name} after step {reached} (+{delay * 1000:.0f} ms), resumed at "
               f"{job.first_step}: status {status}")
  context = "; ".join(log)
  assert status == 4, f"{context}\n{job.stderr()[-3000:]}"  # the SIGTERMed run
  saved = int(re.search(r"stopped after step (\d+)", job.stderr()).group(1))
  assert saved >= reached and (workdir / "checkpoints" / str(saved)).exists(), context
  # Nothing lost at the exit: every metrics line is whole, the SIGTERMed run's last
  # is of the saved step (a SIGKILLed run before it may have logged steps past its
  # last checkpoint: those lines stay, earlier in the file), and the checkpoint
  # written on the way out restores.
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if "train/grad_norm" in r][-1] == saved, context
  assert checkpoint_arrays(workdir, saved), context

  # Resume to the end with compatible changes (logging, evaluation, keep-N).
  final = _MainJob(workdir, tiny_data_dir, "--config.log_every=7", "--config.eval_every=10",
                   "--config.keep_checkpoints=3")
  assert final.finish() == 0, final.stderr()[-3000:]
  assert f"resuming from checkpoint step {saved} " in final.stdout(), context
  _assert_bit_identical(workdir, reference, context)
