r"""Run cover_jax on a SLURM GPU cluster: write the batch script and `sbatch` it.

One task runs per host (it drives all the host's GPUs) or per GPU
(`--per=gpu`); JAX reads the coordinator, process count and index from
SLURM's environment (`cover_jax.parallel.distributed`: SLURM_JOB_ID, SLURM_NTASKS, ...
and the first node of SLURM_JOB_NODELIST), so every task runs the same
command. `--dry-run` prints the `sbatch` command with the exact script.

  python launch/slurm.py --nodes=4 --gpus_per_node=8 --partition=gpu \
      --config=configs/demo.py --workdir=/shared/runs/demo --time=24:00:00 \
      -- --config.total_steps=8000
  python launch/slurm.py ... --per=gpu         # 32 tasks of one GPU each
  squeue --me; tail -f /shared/runs/demo/slurm-<jobid>.out

The workdir must be on a filesystem all nodes share (checkpoints are written
by every task, metrics by task 0).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import commands  # noqa: E402  (launch/commands.py, next to this script)


def batch_script(args) -> str:
  tasks_per_node = args.gpus_per_node if args.per == "gpu" else 1
  train = commands.main_command(args.config, args.workdir, ["--distributed=on", *args.overrides],
                                python=args.python)
  lines = [
      "#!/bin/bash",
      f"#SBATCH --job-name={args.job_name}",
      f"#SBATCH --nodes={args.nodes}",
      f"#SBATCH --ntasks-per-node={tasks_per_node}",
      f"#SBATCH --gpus-per-node={args.gpus_per_node}",
      f"#SBATCH --cpus-per-task={args.cpus_per_task}",
      f"#SBATCH --time={args.time}",
      f"#SBATCH --output={os.path.join(args.workdir, 'slurm-%j.out')}",
      *([f"#SBATCH --partition={args.partition}"] if args.partition else []),
      *([f"#SBATCH --account={args.account}"] if args.account else []),
      # SIGTERM to every task this long before the time limit: the trainer saves
      # and exits (status 4); --requeue restarts a preempted job, which resumes.
      f"#SBATCH --signal=TERM@{args.term_seconds_before_end}",
      "#SBATCH --requeue",
      "set -euo pipefail",
      f"cd {shlex.quote(args.repo)}",
      *_device_env(args),
      # Checkpoints survive a requeue; SIGTERM reaches every task before the kill.
      f"srun --kill-on-bad-exit=1 {shlex.join(train)}",
  ]
  return "\n".join(lines) + "\n"


def _device_env(args) -> list[str]:
  """Under SLURM, JAX gives each task one GPU (its SLURM_LOCALID) unless told otherwise."""
  if args.per == "gpu":
    return []
  ids = ",".join(str(i) for i in range(args.gpus_per_node))
  return [f"export JAX_LOCAL_DEVICE_IDS={ids}  # one task drives all of its host's GPUs"]


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--nodes", type=int, default=1)
  parser.add_argument("--gpus_per_node", type=int, default=8)
  parser.add_argument("--per", choices=["host", "gpu"], default="host",
                      help="one process per host (all its GPUs) or per GPU")
  parser.add_argument("--cpus_per_task", type=int, default=8)
  parser.add_argument("--time", default="24:00:00")
  parser.add_argument("--term_seconds_before_end", type=int, default=120,
                      help="SIGTERM (save and stop) this many seconds before --time runs out")
  parser.add_argument("--partition", default="")
  parser.add_argument("--account", default="")
  parser.add_argument("--job_name", default="cover_jax")
  parser.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))), help="repository on the shared filesystem, installed with .[gpu]")
  parser.add_argument("--python", default=".venv/bin/python")
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--workdir", required=True, help="shared directory for the run")
  commands.add_dry_run(parser)
  argv, overrides = commands.split_overrides(argv)
  args = parser.parse_args(argv)
  args.overrides = overrides
  return args


def submit_commands(args) -> tuple[list[list[str]], list[str]]:
  """([mkdir, sbatch], [None, script]): sbatch reads the script on stdin."""
  return ([["mkdir", "-p", args.workdir], ["sbatch"]], [None, batch_script(args)])


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  if not args.dry_run and shutil.which("sbatch") is None:
    # Checked before anything is created (the workdir included).
    sys.exit("error: sbatch is not on the PATH: run this on a SLURM login node (or load the "
             "SLURM module), or pass --dry-run to print the job script")
  cmds, stdin = submit_commands(args)
  commands.execute(cmds, args.dry_run, stdin_texts=stdin)


if __name__ == "__main__":
  main()
