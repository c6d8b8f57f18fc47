r"""ImageNet-1k as 1-frame videos (catalog: cover_jax/config/catalog.py), from TFDS `imagenet2012`.

Data: the TFDS data_dir holding the prepared `imagenet2012` (a manual download,
built once, never at run time; docs/data.md "Preparing data").

  python -m cover_jax.main --config=configs/imagenet1k.py:data=/data/tfds --workdir=/ckpt/in1k \
      --config.init_from=/ckpt/ViT-B_16.npz

Arguments (after the colon): data (the TFDS data_dir, default /data/in1k),
variant (B/16), steps (30000), tiny (a seconds-long variant for tests).
ImageNet TFRecords of your own instead: --config.datasets.in1k.source=image_records
--config.datasets.in1k.path=DIR (--config.datasets.in1k.label_offset=-1 for
TF-slim records, whose labels start at 1).
"""

from cover_jax.config import catalog


def get_config(arg=None):
  return catalog.experiment_config(["in1k"], arg)
