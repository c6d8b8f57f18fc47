r"""Moments-in-Time: fine-tune CoVeR's TimeSformer on one dataset (catalog: cover_jax/config/catalog.py).

Data: DMVR-format records made by the preparation tool (docs/data.md "Preparing data"),
e.g. `python -m cover_jax.prepare --format=folder --split=train ... --output_dir=/data/mit`
and the same for `--split=validation`.

  python -m cover_jax.main --config=configs/mit.py:data=/data/mit --workdir=/ckpt/mit \
      --config.init_from=/ckpt/ViT-B_16.npz

Arguments (after the colon): data (the records' directory, default /data/mit),
variant (B/16), frames (8), steps (30000), tiny (a seconds-long variant for tests).
Any field can be overridden: --config.datasets.mit.eval_clips=2.
"""

from cover_jax.config import catalog


def get_config(arg=None):
  return catalog.experiment_config(["mit"], arg)
