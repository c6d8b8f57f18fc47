r"""Entry point: co-train CoVeR per a config, or evaluate its latest checkpoint.

  python -m cover_jax.main --config=configs/demo.py --workdir=/tmp/cover_demo
  python -m cover_jax.main --config=configs/demo.py:datasets=motion --workdir=/tmp/m \
      --config.total_steps=600
  python -m cover_jax.main --config=configs/demo.py --workdir=/tmp/cover_demo --mode=eval

Running the same command again resumes from the latest checkpoint in --workdir.
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
flags.mark_flags_as_required(["config", "workdir"])


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

  from cover_jax import config_validation, trainer

  config = _CONFIG.value
  try:
    config_validation.validate_config(config, num_devices=jax.device_count(),
                                      process_count=jax.process_count())
  except config_validation.ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  logging.info("config:\n%s", config)
  try:
    if _MODE.value == "eval":
      trainer.evaluate_checkpoint(config, _WORKDIR.value)
    else:
      trainer.train_and_evaluate(config, _WORKDIR.value)
  except trainer.NoCheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except trainer.NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  app.run(main)
