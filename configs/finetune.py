r"""Fine-tune a trained model on one dataset: a co-trained CoVeR run, or a released TimeSformer.

Two recipes, one file (the starting weights go in `init`, any format
`--config.init_from` takes: docs/finetune.md "Fine-tuning"):

1. A co-trained CoVeR checkpoint on one of its datasets. The head of the same
   name and class count is kept, so fine-tuning starts from the co-trained
   accuracy:

     python -m cover_jax.main \
         --config=configs/finetune.py:dataset=k400,data=/data/k400,init=/ckpt/cover \
         --workdir=/ckpt/cover_ft_k400

2. A released TimeSformer (official `.pyth` or a HuggingFace directory) on a
   new dataset, prepared with `python -m cover_jax.prepare --format=csv`
   (or `folder`) into DMVR records: the backbone is loaded, the dataset gets a
   new head of `classes` outputs (their names come from the records'
   classes.txt):

     python -m cover_jax.main --config=configs/finetune.py:dataset=hmdb51,classes=51,data=/data/hmdb51,init=/ckpt/TimeSformer_divST_8x32_224_K400.pyth \
         --workdir=/ckpt/tsf_hmdb51

Arguments (after the colon): dataset (a catalog name — k400, k600, k700, ssv2,
mit, in1k, in21k — or any new name), data (its directory, default
/data/<dataset>), init (the weights to start from, default /ckpt/pretrained),
classes (new datasets only), stride (new datasets: the temporal stride at the
prepared frame rate, default 8), frames (8), variant
(B/16), steps (10000; 4 with tiny), learning_rate (0.005, SGD as TimeSformer's
fine-tuning), tiny (a seconds-long variant for tests).
"""

from cover_jax.config import args as config_args
from cover_jax.config import catalog


def get_config(arg=None):
  arg = config_args.parse_arg(arg, dataset="k400", data="", init="/ckpt/pretrained", classes=0,
                              stride=8, frames=8, variant="B/16", steps=0,
                              learning_rate=0.005, tiny=False)
  _check(arg)
  data = arg.data or f"/data/{arg.dataset}"
  known = arg.dataset in catalog.CATALOG
  base = ["k400"] if not known else [arg.dataset]  # the catalog's video recipe for a new one
  config = catalog.experiment_config(base, _catalog_arg(arg, data))
  with config.unlocked():
    if not known:
      new = catalog.dataset_entry(
          "k400", data, tiny=arg.tiny, num_classes=arg.classes,
          num_frames=config.datasets.k400.num_frames, stride=2 if arg.tiny else arg.stride)
      del config.datasets["k400"]
      config.datasets[arg.dataset] = new
    config.init_from = arg.init
    config.optimizer.learning_rate = arg.learning_rate
    config.optimizer.warmup_steps = 1 if arg.tiny else 500
  return config


def _catalog_arg(arg, data: str) -> str:
  # steps=0: the recipe's own number (10000; the catalog's 4 for tiny).
  steps = arg.steps or (0 if arg.tiny else 10000)
  parts = [f"data={data}", f"frames={arg.frames}", f"variant={arg.variant}", f"steps={steps}"]
  return ",".join(parts + (["tiny=true"] if arg.tiny else []))


def _check(arg) -> None:
  if arg.dataset not in catalog.CATALOG and arg.classes <= 0:
    raise ValueError(f"configs/finetune.py: dataset={arg.dataset!r} is not in the catalog "
                     f"({sorted(catalog.CATALOG)}): give its class count, e.g. classes=51")
  if arg.dataset in catalog.CATALOG and arg.classes not in (0, catalog.CATALOG[arg.dataset]
                                                            .num_classes):
    raise ValueError(f"configs/finetune.py: classes={arg.classes} but {arg.dataset} has "
                     f"{catalog.CATALOG[arg.dataset].num_classes}: leave classes out")
