"""`python -m cover_jax.prepare`: the data preparation command (cover_jax/prepare/cli.py)."""

from absl import app

from cover_jax.prepare import cli

if __name__ == "__main__":
  cli.define_flags()
  app.run(cli.main)
