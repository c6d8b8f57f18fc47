"""`python -m cover_jax.prepare`: the data preparation command (cover_jax/prepare/cli.py)."""

from absl import app

from cover_jax.train import exits

exits.hold_garbage_collection()  # until the imports are done (train/exits.py)
from cover_jax.metrics import run_log  # noqa: E402  pylint: disable=wrong-import-position

run_log.import_tensorflow_quietly()  # before cli's modules import it
from cover_jax.prepare import cli  # noqa: E402  pylint: disable=wrong-import-position

exits.imports_done()
if __name__ == "__main__":
  cli.define_flags()
  app.run(cli.main)
