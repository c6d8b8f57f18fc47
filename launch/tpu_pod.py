r"""Run cover_jax on a Cloud TPU pod slice: create, install, run, logs, stop, delete.

Every step is a `gcloud` command; `--dry-run` prints them exactly and runs
none. One process runs per TPU VM worker (`--worker=all`); `jax.distributed`
finds the other workers itself (`--distributed=on`), so the same command runs
everywhere. Checkpoints and metrics go to `--workdir` (use a gs:// bucket: the
workers do not share a disk).

  # 1. A v5e-32 slice (8 workers x 4 chips), as a queued resource (spot):
  python launch/tpu_pod.py create --name=cover-v5e --zone=us-west4-a \
      --accelerator=v5litepod-32 --runtime=v2-alpha-tpuv5-lite --queued --spot
  # 2. Copy this repository to every worker and install it (jax[tpu]):
  python launch/tpu_pod.py install --name=cover-v5e --zone=us-west4-a
  # 3. Train (in the background on every worker), then follow worker 0's log:
  python launch/tpu_pod.py run --name=cover-v5e --zone=us-west4-a \
      --config=configs/demo.py --workdir=gs://my-bucket/cover/demo -- --config.total_steps=8000
  python launch/tpu_pod.py logs --name=cover-v5e --zone=us-west4-a
  # 4. Stop training, and delete the slice:
  python launch/tpu_pod.py stop --name=cover-v5e --zone=us-west4-a
  python launch/tpu_pod.py delete --name=cover-v5e --zone=us-west4-a --queued

`up` does create + wait (queued resources) + install + run in one go. Run `python launch/tpu_pod.py
STEP --help` for every option.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import commands  # noqa: E402  (launch/commands.py, next to this script)

REMOTE_DIR = "cover_jax"  # in the workers' home directories
LOG = "cover_jax.log"
PID = "cover_jax.pid"


def _ssh(args, remote: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}",
          *_project(args), f"--worker={worker}", "--command", remote]


def _project(args) -> list[str]:
  return [f"--project={args.project}"] if args.project else []


def create(args) -> list[list[str]]:
  if args.queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "create", args.name,
             f"--node-id={args.name}", f"--zone={args.zone}", *_project(args),
             f"--accelerator-type={args.accelerator}", f"--runtime-version={args.runtime}",
             *(["--spot"] if args.spot else [])]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, f"--zone={args.zone}",
           *_project(args), f"--accelerator-type={args.accelerator}",
           f"--version={args.runtime}", *(["--spot"] if args.spot else [])]]


def wait(args) -> list[list[str]]:
  """Until the queued resource is ACTIVE (capacity can take minutes to hours)."""
  if not args.queued:
    return []
  describe = shlex.join(["gcloud", "compute", "tpus", "queued-resources", "describe", args.name,
                         f"--zone={args.zone}", *_project(args), "--format=value(state.state)"])
  return [["bash", "-c", f"until [ \"$({describe})\" = ACTIVE ]; do sleep 60; done"]]


def install(args) -> list[list[str]]:
  """Copy the repository (without local venvs and caches) and pip-install it on every worker."""
  archive = "/tmp/cover_jax_src.tar.gz"
  pack = ["tar", "czf", archive, "--exclude=.venv", "--exclude=.git", "--exclude=.cache",
          "--exclude=__pycache__", "-C", args.source, "."]
  copy = ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{args.name}:{archive}",
          f"--zone={args.zone}", *_project(args), "--worker=all"]
  # TPU VM images ship an older Python than cover_jax needs (3.11).
  python = (f"(command -v {args.python} || (sudo apt-get update -q && "
            f"sudo apt-get install -y -q {args.python} {args.python}-venv))")
  setup = (f"{python} && mkdir -p ~/{REMOTE_DIR} && tar xzf {archive} -C ~/{REMOTE_DIR} && "
           f"cd ~/{REMOTE_DIR} && {args.python} -m venv .venv && "
           '.venv/bin/pip install -q -e ".[tpu]"')
  return [pack, copy, _ssh(args, setup)]


def run(args) -> list[list[str]]:
  """Start training on every worker in the background; its pid and log stay on the worker."""
  train = commands.main_command(args.config, args.workdir,
                                ["--distributed=on", *args.overrides], python=".venv/bin/python")
  remote = (f"cd ~/{REMOTE_DIR} && setsid nohup {shlex.join(train)} > ~/{LOG} 2>&1 < /dev/null & "
            f"echo $! > ~/{PID}")
  return [_ssh(args, remote)]


def logs(args) -> list[list[str]]:
  return [_ssh(args, f"tail -n +1 -f ~/{LOG}", worker=str(args.worker))]


def stop(args) -> list[list[str]]:
  # SIGTERM by the recorded pid: the trainer can checkpoint before it exits.
  return [_ssh(args, f"test -f ~/{PID} && kill -TERM $(cat ~/{PID}); rm -f ~/{PID}")]


def delete(args) -> list[list[str]]:
  if args.queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "delete", args.name,
             f"--zone={args.zone}", *_project(args), "--force", "--quiet"]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, f"--zone={args.zone}",
           *_project(args), "--quiet"]]


def up(args) -> list[list[str]]:
  return create(args) + wait(args) + install(args) + run(args)


STEPS = {"create": create, "wait": wait, "install": install, "run": run, "logs": logs, "stop": stop,
         "delete": delete, "up": up}


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("step", choices=sorted(STEPS))
  parser.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default="", help="GCP project (default: gcloud's)")
  parser.add_argument("--accelerator", default="v5litepod-32", help="e.g. v4-32, v5litepod-64")
  parser.add_argument("--runtime", default="v2-alpha-tpuv5-lite",
                      help="TPU VM runtime/software version (v4: tpu-ubuntu2204-base)")
  parser.add_argument("--queued", action="store_true",
                      help="create/delete through a queued resource (waits for capacity)")
  parser.add_argument("--spot", action="store_true", help="spot (preemptible) capacity")
  parser.add_argument("--source", default=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), help="repository to install (default: this one)")
  parser.add_argument("--python", default="python3.11", help="Python on the workers")
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--workdir", default="", help="gs://bucket/path for checkpoints/metrics")
  parser.add_argument("--worker", default=0, type=int, help="whose log `logs` follows")
  commands.add_dry_run(parser)
  argv, overrides = commands.split_overrides(argv)
  args = parser.parse_args(argv)
  args.overrides = overrides
  if args.step in ("run", "up") and not args.workdir:
    parser.error(f"{args.step} needs --workdir (a gs:// path every worker can write)")
  return args


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  commands.execute(STEPS[args.step](args), args.dry_run)


if __name__ == "__main__":
  main()
