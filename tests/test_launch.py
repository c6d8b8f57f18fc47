"""Launch scripts: their --dry-run prints exactly the commands they would run."""

import shlex
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


def _dry_run(script: str, *args: str) -> list[str]:
  result = subprocess.run([sys.executable, f"launch/{script}", "--dry-run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout.splitlines()


def test_tpu_pod_up_creates_installs_and_runs_on_every_worker():
  lines = _dry_run("tpu_pod.py", "up", "--name=pod", "--zone=us-west4-a", "--queued", "--spot",
                   "--accelerator=v5litepod-32", "--workdir=gs://bucket/run",
                   "--config=configs/demo.py", "--", "--config.total_steps=8000")
  create, wait, pack, copy, install, run = lines
  assert create == ("gcloud compute tpus queued-resources create pod --node-id=pod "
                    "--zone=us-west4-a --accelerator-type=v5litepod-32 "
                    "--runtime-version=v2-alpha-tpuv5-lite --spot")
  assert "queued-resources describe pod" in wait and "ACTIVE" in wait
  assert pack.startswith("tar czf /tmp/cover_jax_src.tar.gz") and pack.endswith(f"-C {REPO} .")
  assert copy.startswith("gcloud compute tpus tpu-vm scp") and copy.endswith("--worker=all")
  for line in (install, run):
    assert line.startswith("gcloud compute tpus tpu-vm ssh pod --zone=us-west4-a --worker=all "
                           "--command ")
  assert 'pip install -q -e ".[tpu]"' in shlex.split(install)[-1]
  remote = shlex.split(run)[-1]
  assert ("nohup .venv/bin/python -m cover_jax.main --config=configs/demo.py "
          "--workdir=gs://bucket/run --distributed=on --config.total_steps=8000 "
          "> ~/cover_jax.log") in remote
  assert remote.endswith("echo $! > ~/cover_jax.pid")


@pytest.mark.parametrize("step, expected", [
    ("logs", "gcloud compute tpus tpu-vm ssh pod --zone=z --worker=0 --command "
             "'tail -n +1 -f ~/cover_jax.log'"),
    ("stop", "gcloud compute tpus tpu-vm ssh pod --zone=z --worker=all --command "
             "'test -f ~/cover_jax.pid && kill -TERM $(cat ~/cover_jax.pid); rm -f ~/cover_jax.pid'"),
    ("delete", "gcloud compute tpus tpu-vm delete pod --zone=z --quiet"),
])
def test_tpu_pod_logs_stop_delete(step, expected):
  assert _dry_run("tpu_pod.py", step, "--name=pod", "--zone=z") == [expected]


def test_tpu_pod_run_needs_a_workdir():
  result = subprocess.run([sys.executable, "launch/tpu_pod.py", "run", "--name=p", "--zone=z",
                           "--dry-run"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2 and "needs --workdir" in result.stderr


def test_slurm_one_task_per_gpu():
  lines = _dry_run("slurm.py", "--nodes=4", "--gpus_per_node=8", "--per=gpu",
                   "--partition=gpu", "--workdir=/shared/run", "--", "--config.total_steps=10")
  assert lines[0] == "mkdir -p /shared/run"
  assert lines[1] == "sbatch <<'EOF'" and lines[-1] == "EOF"
  script = lines[2:-1]
  for directive in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
                    "--output=/shared/run/slurm-%j.out", "--signal=TERM@120", "--requeue"):
    assert f"#SBATCH {directive}" in script
  assert not any("JAX_LOCAL_DEVICE_IDS" in line for line in script)  # JAX: one GPU per task
  assert script[-1] == ("srun --kill-on-bad-exit=1 .venv/bin/python -m cover_jax.main "
                        "--config=configs/demo.py --workdir=/shared/run --distributed=on "
                        "--config.total_steps=10")


def test_slurm_one_task_per_host_sees_all_its_gpus():
  script = _dry_run("slurm.py", "--nodes=2", "--gpus_per_node=4", "--workdir=/shared/run")
  assert "#SBATCH --ntasks-per-node=1" in script
  assert any(line.startswith("export JAX_LOCAL_DEVICE_IDS=0,1,2,3") for line in script)


def test_sweep_expands_into_runs_with_their_own_workdirs():
  lines = _dry_run("sweep.py", "--config=configs/demo.py:tiny=true", "--sweep=learning_rate",
                   "--workdir=/tmp/sweeps", f"--python={sys.executable}", "--",
                   "--config.log_every=1")
  assert lines == [
      f"{sys.executable} -m cover_jax.main --config=configs/demo.py:tiny=true "
      f"--workdir=/tmp/sweeps/learning_rate/{i:02d}_learning_rate={lr} "
      f"--config.optimizer.learning_rate={lr} --config.log_every=1"
      for i, lr in enumerate(("0.0003", "0.001", "0.003"))]


def test_sweep_on_slurm_submits_one_job_per_run():
  lines = _dry_run("sweep.py", "--config=configs/demo.py", "--sweep=learning_rate",
                   "--workdir=/shared/sweeps", "--launcher=slurm", "--nodes=2")
  assert [l for l in lines if l.startswith("sbatch")] == ["sbatch <<'EOF'"] * 3
  assert "#SBATCH --job-name=learning_rate-02" in lines
  assert lines[-2].endswith("--workdir=/shared/sweeps/learning_rate/02_learning_rate=0.003 "
                            "--distributed=on --config.optimizer.learning_rate=0.003")


def test_unknown_sweep_lists_the_known_ones():
  result = subprocess.run([sys.executable, "launch/sweep.py", "--config=configs/demo.py",
                           "--sweep=lr", "--workdir=/tmp/s", "--dry-run"], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode == 1 and "its sweeps: learning_rate" in result.stderr


def test_slurm_without_sbatch_says_so_and_creates_nothing(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "launch/slurm.py", "--nodes=1", "--gpus_per_node=1",
       "--config=configs/demo.py", f"--workdir={workdir}"], cwd=REPO, capture_output=True,
      text=True, timeout=60, env={**os.environ, "PATH": str(tmp_path)})  # no sbatch there
  assert result.returncode != 0
  assert "sbatch is not on the PATH" in result.stderr and "Traceback" not in result.stderr
  assert not workdir.exists()
