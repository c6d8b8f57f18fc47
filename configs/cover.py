r"""CoVeR: co-train one TimeSformer on Kinetics-400, SSv2, Moments-in-Time and ImageNet-21k.

One head per dataset; every step trains on one batch of every dataset and the
loss is the weighted mean of their losses (mixture 'all', equal weights).
Dataset settings come from cover_jax/config/catalog.py; data directories from the
arguments (docs/data.md "Preparing data" makes them):

  python -m cover_jax.main --config=configs/cover.py:k400=/data/k400,ssv2=/data/ssv2,mit=/data/mit,in21k=/data/in21k \
      --workdir=/ckpt/cover --config.init_from=/ckpt/ViT-B_16.npz

Arguments (after the colon): k400, ssv2, mit, in21k (data directories, default
/data/<name>), variant (B/16), frames (8), steps (30000), tiny (a seconds-long
variant for tests).

Where each choice comes from. Paper: Zhang et al., "Co-training Transformer
with Videos and Images Improves Action Recognition", arXiv 2112.07175. Only its
abstract could be read (ar5iv copy): its method and implementation sections
could not, so every number below that the abstract does not give is ours.
- Co-train several video datasets with different label spaces ("Kinetics is
  appearance-focused while SomethingSomething is motion-focused"), plus images
  "as single-frame videos": paper, abstract. Images enter as T=1 clips.
- TimeSformer backbone started from ImageNet-21k weights: paper, abstract
  ("pretrained on ImageNet-21K based on the TimeSFormer architecture").
- The datasets K400 + SSv2 + MiT + ImageNet-21k: ours. The abstract reports
  results on K400, K600, K700, SSv2 and MiT but not which of them (nor which
  image set) each co-training run used.
- mixture 'all' (every dataset every step) and equal weights 1.0: ours; the
  paper's batch composition, sampling ratios and loss weights were not read.
- Frames 8, 224 px, ViT-B/16, SGD lr 0.005 with warm-up + cosine, weight decay
  1e-4, 30000 steps, batch 64 per video set / 256 for images, label smoothing
  0.1, stochastic depth 0.1, plain random crop: ours (TimeSformer's fine-tuning
  recipe, catalog.experiment_config / dataset_entry), not the paper's.
tests/test_configs.py pins the datasets, mixture and weights; change them there too.
"""

from cover_jax.config import catalog

DATASETS = ["k400", "ssv2", "mit", "in21k"]
WEIGHTS = {"k400": 1.0, "ssv2": 1.0, "mit": 1.0, "in21k": 1.0}


def get_config(arg=None):
  return catalog.experiment_config(DATASETS, arg, weights=WEIGHTS, mixture="all")
