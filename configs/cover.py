r"""CoVeR: co-train one TimeSformer on Kinetics-400, SSv2, Moments-in-Time and ImageNet-21k.

One head per dataset; every step trains on a batch of every dataset with the
sum of their losses (mixture 'all', equal weights: our reading of the paper's
multi-task co-training; change with --config.datasets.<name>.weight=...).
Dataset settings come from cover_jax/data/catalog.py; data directories from the
arguments (README "Preparing data" makes them):

  python -m cover_jax.main --config=configs/cover.py:k400=/data/k400,ssv2=/data/ssv2,mit=/data/mit,in21k=/data/in21k \
      --workdir=/ckpt/cover --config.init_from=/ckpt/ViT-B_16.npz

Arguments (after the colon): k400, ssv2, mit, in21k (data directories, default
/data/<name>), variant (B/16), frames (8), steps (30000), tiny (a seconds-long
variant for tests).
"""

from cover_jax.data import catalog

DATASETS = ["k400", "ssv2", "mit", "in21k"]
WEIGHTS = {"k400": 1.0, "ssv2": 1.0, "mit": 1.0, "in21k": 1.0}


def get_config(arg=None):
  return catalog.experiment_config(DATASETS, arg, weights=WEIGHTS, mixture="all")
