r"""Entry point: co-train CoVeR per a config, or evaluate its latest checkpoint.

  python -m cover_jax.main --config=configs/demo.py --workdir=/tmp/cover_demo
  python -m cover_jax.main --config=configs/demo.py:datasets=motion --workdir=/tmp/m \
      --config.total_steps=600
  python -m cover_jax.main --config=configs/demo.py --workdir=/tmp/cover_demo --mode=eval

Running the same command again resumes from the latest checkpoint in --workdir.
Several hosts: run the same command on each (launch/ has TPU pod and SLURM
scripts); `jax.distributed` is initialised from --coordinator_address /
--num_processes / --process_id, the JAX_* environment, or the cluster.

Exit status: 0 done; 1 nothing to evaluate (--mode=eval without a checkpoint);
2 invalid config, or one that does not fit the workdir's checkpoint; 3 a loss
or gradient became NaN/Inf; 4 preempted (SIGTERM): a checkpoint was saved, run
the same command again; 5 the workdir cannot take checkpoints (unwritable,
full); 6 a dataset cannot be read (no examples, not prepared, none of its first
records decodes, or its classes.txt disagrees with its records).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming if possible) then evaluate; "
                          "eval: evaluate the latest checkpoint in --workdir.")
# Multi-process runs (cover_jax/parallel/distributed.py): automatic on Cloud TPU pods and
# under SLURM; elsewhere give the coordinator (or JAX_COORDINATOR_ADDRESS etc.).
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "auto: initialise jax.distributed when a coordinator is given "
                                 "or a SLURM job / TPU pod is detected; on: always; off: never.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
flags.mark_flags_as_required(["config", "workdir"])
DATASET_EXIT_STATUS = 6  # a dataset cannot be read (see the module docstring)


class _QuietLibraries:
  """Drops INFO chatter of Orbax/TFDS (a few hundred lines per checkpoint)."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/clu/")
  # TFDS warnings that every run of our (unregistered, configured) builders
  # triggers and that ask nothing of the user.
  HARMLESS = ("Using custom data configuration", "`FeatureConnector.dtype` is deprecated",
              "Variant folder %s has no %s")

  def filter(self, record) -> bool:
    if any(p in record.pathname for p in self.NOISY):
      return record.levelno >= 30 and not str(record.msg).startswith(self.HARMLESS)
    return True


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax  # after absl parsed flags, so JAX flags/env are settled

  from cover_jax.config import validation
  from cover_jax.parallel import distributed
  from cover_jax.train import loop, preemption
  from cover_jax.checkpoint import resume_checks, workdir
  from cover_jax.prepare import class_list
  from cover_jax.input import pipeline
  from cover_jax.pretrained.weights import PretrainedError

  try:  # before anything touches a device
    distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)  # process 0 tells the story
  config = _CONFIG.value
  try:
    validation.validate_config(config, num_devices=jax.device_count(),
                                      process_count=jax.process_count())
  except validation.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("config:\n%s", config)
  # What each failure means for the user: (exception, exit status, message prefix).
  # Statuses: 1 nothing to evaluate, 2 the config does not fit, 3 non-finite loss,
  # 4 preempted (checkpoint saved), 5 unusable workdir, 6 unreadable dataset.
  failures = (
      (resume_checks.LayoutMismatchError, 2, "error: "),  # scanned vs unscanned workdir
      (resume_checks.ResumeConfigError, 2, "error: "),
      (PretrainedError, 2, "error: config.init_from: "),
      (loop.NoCheckpointError, 1, "error: "),
      (loop.NonFiniteLossError, 3, "error: "),
      (preemption.Preempted, preemption.EXIT_STATUS, ""),
      (workdir.WorkdirError, workdir.EXIT_STATUS, "error: "),
      (pipeline.DatasetError, DATASET_EXIT_STATUS, "error: "),
      (class_list.ClassListError, DATASET_EXIT_STATUS, "error: "),
  )
  try:
    if _MODE.value == "eval":
      loop.evaluate_checkpoint(config, _WORKDIR.value)
    else:
      loop.train_and_evaluate(config, _WORKDIR.value)
  except tuple(kind for kind, _, _ in failures) as e:
    status, prefix = next((s, p) for kind, s, p in failures if isinstance(e, kind))
    print(f"{prefix}{e}", file=sys.stderr)
    sys.exit(status)

if __name__ == "__main__":
  app.run(main)
