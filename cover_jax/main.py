r"""Entry point: co-train CoVeR per a config, or evaluate its latest checkpoint.

  python -m cover_jax.main --config=configs/demo.py --workdir=/tmp/cover_demo
  python -m cover_jax.main --config=configs/demo.py:datasets=motion --workdir=/tmp/m \
      --config.total_steps=600
  python -m cover_jax.main --config=configs/demo.py --workdir=/tmp/cover_demo --mode=eval

Running the same command again resumes from the latest checkpoint in --workdir
(a finished run prints its saved results). Several hosts: run the same
command on each (launch/ has TPU pod and SLURM scripts); `jax.distributed` is
initialised from --coordinator_address / --num_processes / --process_id, the
JAX_* environment, or the cluster.

What the terminal shows is the run's story (what is being built, compiled,
trained, evaluated) and warnings a user must act on; every log line, ours and
the libraries', goes to <workdir>/log.txt, and the full config to
<workdir>/config.json.

Exit status: 0 done; 1 nothing to evaluate (--mode=eval without a checkpoint);
2 invalid config, or one that does not fit the workdir's checkpoint; 3 a loss
or gradient became NaN/Inf; 4 preempted (SIGTERM): a checkpoint was saved, run
the same command again; 5 the workdir cannot take checkpoints (unwritable,
full); 6 a dataset cannot be read (no examples, not prepared, none of its first
records decodes, or its classes.txt disagrees with its records).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from cover_jax.config import command_line
from cover_jax.train import exits

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming if possible) then evaluate; "
                          "eval: evaluate the latest checkpoint in --workdir.")
# Multi-process runs (parallel/distributed.py): automatic on Cloud TPU pods and
# under SLURM; elsewhere give the coordinator (or JAX_COORDINATOR_ADDRESS etc.).
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "auto: initialise jax.distributed when a coordinator is given "
                                 "or a SLURM job / TPU pod is detected; on: always; off: never.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])
DATASET_EXIT_STATUS = exits.DATASET_EXIT_STATUS  # a dataset cannot be read (see above)


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  jax = exits.start(f"cover_jax: {_MODE.value} in {workdir}")

  from cover_jax.config import validation  # pylint: disable=import-outside-toplevel
  from cover_jax.metrics import run_log  # pylint: disable=import-outside-toplevel
  from cover_jax.parallel import distributed  # pylint: disable=import-outside-toplevel
  from cover_jax.train import loop  # pylint: disable=import-outside-toplevel

  try:  # before anything touches a device
    distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() != 0:
    run_log.quiet_terminal()  # process 0 tells the story
  failures = exits.failures()
  exits.imports_done()
  try:
    validation.validate_config(config, num_devices=jax.device_count(),
                               process_count=jax.process_count())
    if _MODE.value == "eval":
      loop.evaluate_checkpoint(config, workdir)
    else:
      print(f"config: {workdir}/config.json, log: {run_log.to_workdir(workdir)}", flush=True)
      loop.train_and_evaluate(config, workdir)
  except tuple(kind for kind, _, _ in failures) as e:
    status, message = exits.status_and_message(e, failures)
    print(message, file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
  exits.hold_garbage_collection()  # until main() has imported what it runs
  app.run(main, flags_parser=lambda argv: command_line.parse_or_exit(argv, _CONFIG))
