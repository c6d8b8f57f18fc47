r"""ImageNet-21k as 1-frame videos (catalog: cover_jax/config/catalog.py), from a folder of class folders.

Data: the fall11 release unpacked as `<dir>/<wnid>/<image>.JPEG` (no preparation;
the class list is the sorted folder names, or a classes.txt in <dir>). It has no
official held-out split, so it is not evaluated; put held-out images in
`<dir>/validation/<wnid>/` (and the training ones in `<dir>/train/<wnid>/`) and
pass --config.datasets.in21k.eval_split=validation to evaluate.

  python -m cover_jax.main --config=configs/imagenet21k.py:data=/data/in21k --workdir=/ckpt/in21k

Arguments (after the colon): data (default /data/in21k), variant (B/16),
steps (30000), tiny (a seconds-long variant for tests).
"""

from cover_jax.config import catalog


def get_config(arg=None):
  return catalog.experiment_config(["in21k"], arg)
