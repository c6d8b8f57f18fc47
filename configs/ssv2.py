r"""Something-Something-v2: fine-tune CoVeR's TimeSformer on one dataset (catalog: cover_jax/config/catalog.py).

Data: DMVR-format records made by the preparation tool (docs/data.md "Preparing data"),
e.g. `python -m cover_jax.prepare --format=ssv2 --split=train ... --output_dir=/data/ssv2`
and the same for `--split=validation`.

  python -m cover_jax.main --config=configs/ssv2.py:data=/data/ssv2 --workdir=/ckpt/ssv2 \
      --config.init_from=/ckpt/ViT-B_16.npz

Arguments (after the colon): data (the records' directory, default /data/ssv2),
variant (B/16), frames (8), steps (30000), tiny (a seconds-long variant for tests).
Any field can be overridden: --config.datasets.ssv2.eval_clips=2.
"""

from cover_jax.config import catalog


def get_config(arg=None):
  return catalog.experiment_config(["ssv2"], arg)
