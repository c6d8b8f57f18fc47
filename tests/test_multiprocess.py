"""Multi-host training for real: two JAX processes on 127.0.0.1 (gloo CPU collectives).

Two `python -m cover_jax.main` processes with 2 CPU devices each form one
4-device mesh through `jax.distributed`, each reading its half of the input.
They train, checkpoint (Orbax, from both processes), are restarted and
restore; their per-step losses must equal those of the same run in one
process with 4 devices. Start-up decisions of `cover_jax.parallel.distributed` are
tested without starting anything.
"""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from cover_jax.parallel import distributed
from cover_jax.input import shards
from tests.helpers import REPO, fake_devices_env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(workdir, data_dir, steps: int, devices: int, *flags) -> subprocess.Popen:
  # A constant learning rate after warm-up (end = peak), so that a run stopped
  # at step 4 and extended to 6 follows the same schedule as one run to 6.
  cmd = [sys.executable, "-m", "cover_jax.main",
         "--config=configs/demo.py:tiny=true,datasets=motion", f"--workdir={workdir}",
         f"--config.data_dir={data_dir}", f"--config.total_steps={steps}",
         "--config.checkpoint_every=2", "--config.log_every=1", "--config.eval_every=0",
         "--config.optimizer.end_learning_rate=1e-3", "--config.input.shards=2", *flags]
  env = fake_devices_env(devices)
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _two_processes(workdir, data_dir, steps: int, extra=()) -> list[subprocess.Popen]:
  address = f"127.0.0.1:{_free_port()}"
  return [_start(workdir, data_dir, steps, 2, f"--coordinator_address={address}",
                 "--num_processes=2", f"--process_id={i}", *extra) for i in range(2)]


def _finish(processes, timeout_s: int = 420) -> list[str]:
  """Their logs once all exit 0; a run that hangs is killed (and fails) after `timeout_s`."""
  logs = []
  try:
    for p in processes:
      logs.append(p.communicate(timeout=timeout_s)[0])
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
    logs = [p.communicate()[0] for p in processes]
    pytest.fail(f"a process did not finish in {timeout_s} s; logs:\n" +
                "\n---\n".join(log[-2000:] for log in logs))
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log[-3000:]
  return logs


def _losses(workdir) -> dict[int, float]:
  records = [json.loads(line) for line in open(pathlib.Path(workdir) / "metrics.jsonl")]
  return {r["step"]: r["train/motion/loss"] for r in records if "train/motion/loss" in r}


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):
  """Workdirs and logs: two processes to step 4, then restarted to 6; one process to 6."""
  two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
  first = _finish(_two_processes(two, tiny_data_dir, 4))
  second = _finish(_two_processes(two, tiny_data_dir, 6))
  # Afterwards, not alongside: on 2 cores a third process slows the pair's collectives.
  _finish([_start(one, tiny_data_dir, 6, 4)])
  return dict(two=two, one=one, first=first, second=second)


def test_two_processes_restart_and_match_one_process(runs):
  assert "process 0 of 2, 4 device(s)" in runs["first"][0]
  assert "resuming from checkpoint step 4" in runs["second"][0]
  two, one = _losses(runs["two"]), _losses(runs["one"])
  assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose([two[s] for s in range(1, 7)], [one[s] for s in range(1, 7)],
                             rtol=1e-5)
  assert len(set(two.values())) > 1  # training moved


def test_only_process_zero_writes_metrics_and_the_summary(runs):
  steps = [json.loads(line)["step"] for line in open(runs["two"] / "metrics.jsonl")
           if "train/motion/loss" in line]
  assert steps == [1, 2, 3, 4, 5, 6]  # one writer: no step twice
  assert "Final accuracy" in runs["second"][0] and "Final accuracy" not in runs["second"][1]
  assert (runs["two"] / "results.txt").read_text() == (runs["one"] / "results.txt").read_text()
  assert sorted(p.name for p in (runs["two"] / "checkpoints").iterdir()
                if p.name.isdigit()) == ["4", "6"]


def test_input_shards_are_split_between_processes():
  assert shards.resolve_num_shards(0, 2) == 2
  assert list(shards.owned_shards(4, 1, 2)) == [2, 3]
  with pytest.raises(ValueError, match="multiple of the 2 process"):
    shards.resolve_num_shards(3, 2)
  joined = shards.concatenated(lambda s: iter([{"x": np.full((2,), s)}]), range(2, 4))
  np.testing.assert_array_equal(next(joined)["x"], [2, 2, 3, 3])


@pytest.mark.parametrize("env, expected", [
    ({}, (False, None)),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "16"}, (True, None)),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, (False, None)),
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}, (True, None)),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "1"}, (True, "10.0.0.1:1234")),
])
def test_distributed_plan_from_environment(env, expected):
  plan = distributed.plan("auto", environ=env)
  assert (plan.initialize, plan.coordinator_address) == expected


def test_distributed_plan_flags_win_and_must_be_complete():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "8",
         "JAX_PROCESS_ID": "3"}
  plan = distributed.plan("auto", "127.0.0.1:5", 2, 0, environ=env)
  assert (plan.coordinator_address, plan.num_processes, plan.process_id) == ("127.0.0.1:5", 2, 0)
  assert not distributed.plan("off", environ=env).initialize
  with pytest.raises(ValueError, match="give all three"):
    distributed.plan("auto", "127.0.0.1:5", environ={})
