r"""CoVeR at toy scale: co-train on the three embedded synthetic datasets, on CPU.

The datasets (built on first use into `config.data_dir`, no network):
  appearance  Kinetics-like: which object is in the clip (it moves at random)
  motion      Something-Something-like: what the object does over time
              (classes in time-reversed pairs; never flipped)
  images      ImageNet-like: single frames of objects, more classes

Main job (about 8 minutes on 2 CPU cores, install included):
  python -m cover_jax.main --config=configs/demo.py --workdir=/tmp/cover_demo

A subset on its own (the paper's comparison, with seeds and a pretrained
start, is configs/study.py: python -m cover_jax.study, docs/study.md):
  python -m cover_jax.main --config=configs/demo.py:datasets=motion --workdir=/tmp/m

Arguments (after the colon, comma-separated):
  datasets  '+'-joined subset of appearance, motion, images
  steps     training steps (default 4000; 6 with tiny)
  mixture   'sample' (one dataset per step, by weight) or 'all' (every dataset
            every step, weighted sum of losses)
  tiny      a seconds-long variant for tests and smoke runs
Any field can also be overridden: --config.optimizer.learning_rate=3e-4.
"""

from __future__ import annotations

import ml_collections

from cover_jax.config import args as config_args, catalog, defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # steps=0: the variant's own number (4000, or 6 for tiny), so any explicit value is kept.
  arg = config_args.parse_arg(arg, datasets="appearance+motion+images", steps=0,
                              mixture="sample", tiny=False)
  names = [n for n in arg.datasets.split("+") if n]
  unknown = [n for n in names if n not in catalog.EMBEDDED]
  if unknown or not names:
    raise ValueError(f"configs/demo.py: unknown dataset(s) {unknown} in "
                     f"datasets={arg.datasets!r}; choose a '+'-joined subset of "
                     f"{sorted(catalog.EMBEDDED)}, e.g. datasets=appearance+motion.")

  config = defaults.base_config()
  config.mixture = arg.mixture
  config.total_steps = arg.steps or (6 if arg.tiny else 4000)
  config.eval_every = 1000
  config.checkpoint_every = 1000

  config.model = defaults.model_config(
      variant="Mu/8", image_size=32, num_frames=4,
      # From scratch: a small random time embedding, and random heads (see
      # models/cover.py: with zero heads a motion-only run stays at chance).
      time_embed_init_std=0.02, head_init_std=0.02)
  # A 4-layer model trained for minutes: no regularisation needed (the defaults).
  config.optimizer = defaults.optimizer_config(learning_rate=1e-3, warmup_steps=100)

  for name in names:
    config.datasets[name] = catalog.embedded_entry(name, tiny=arg.tiny)

  if arg.tiny:
    config.log_every = config.eval_every = config.checkpoint_every = 3
    config.model.update(variant="Mu/8", width=32, depth=1, num_heads=2, mlp_dim=64,
                        image_size=16, num_frames=4)
    config.optimizer.warmup_steps = 2
  config.lock()
  return config


def sweep_learning_rate():
  """Peak learning rates around the demo's 1e-3 (launch/sweep.py --sweep=learning_rate)."""
  return [{"optimizer.learning_rate": lr} for lr in (3e-4, 1e-3, 3e-3)]
