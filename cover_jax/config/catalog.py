"""The paper's datasets: class counts, clip sampling, flip policy, eval views, where they come from.

`configs/<dataset>.py` and `configs/cover.py` build their `config.datasets`
entries from this table (`dataset_entry`), so a dataset's settings are written
down once. Paths come from the config file's arguments (`experiment_config`).

Clip sampling follows TimeSformer's recipes on our prepared frame rates
(docs/data.md "Preparing data": Kinetics and MiT at 25 fps, SSv2 at 12 fps):
Kinetics 8 frames at stride 32 (as TimeSformer's 8x32), Moments-in-Time
(3-second videos) 8 at stride 8, SSv2 one frame from each of 8 segments of the
whole video. SSv2 is never flipped: its classes name directions ("pushing
something from left to right").
"""

from __future__ import annotations

import dataclasses

import ml_collections

from cover_jax.config import args as config_args, defaults


@dataclasses.dataclass(frozen=True)
class Entry:
  """One dataset of the paper; fields mirror defaults.dataset_config."""
  title: str
  num_classes: int
  source: str                # 'dmvr' (our prepare tool), 'tfds', 'image_folder'
  num_frames: int = 8
  stride: int = 1
  sampling: str = "stride"
  flip: bool = True
  eval_clips: int = 1
  eval_crops: int = 3
  eval_split: str = "validation"
  eval_short_side: int = 0   # images: resize to 256 then crop 224 (the 0.875 convention)
  tfds_name: str = ""
  prepare: str = ""          # how its data directory is made (docs/data.md "Preparing data")


CATALOG = {
    "k400": Entry("Kinetics-400", 400, "dmvr", stride=32, eval_clips=4,
                  prepare="python -m cover_jax.prepare --format=kinetics ..."),
    "k600": Entry("Kinetics-600", 600, "dmvr", stride=32, eval_clips=4,
                  prepare="python -m cover_jax.prepare --format=kinetics ..."),
    "k700": Entry("Kinetics-700", 700, "dmvr", stride=32, eval_clips=4,
                  prepare="python -m cover_jax.prepare --format=kinetics ..."),
    "ssv2": Entry("Something-Something-v2", 174, "dmvr", sampling="segment", flip=False,
                  prepare="python -m cover_jax.prepare --format=ssv2 --fps=12 ..."),
    "mit": Entry("Moments-in-Time", 339, "dmvr", stride=8,
                 prepare="python -m cover_jax.prepare --format=folder ..."),
    "in1k": Entry("ImageNet-1k", 1000, "tfds", num_frames=1, eval_crops=1, eval_short_side=256,
                  tfds_name="imagenet2012", prepare="TFDS imagenet2012 (manual download)"),
    # The fall11 release as used for ViT pre-training (21,843 classes). It has
    # no official held-out split: not evaluated unless eval_split names one.
    "in21k": Entry("ImageNet-21k", 21843, "image_folder", num_frames=1, eval_crops=1,
                   eval_split="", eval_short_side=256, prepare="none: <wnid>/<image>.JPEG"),
}


# The embedded datasets (cover_jax/prepare/synthetic.py), built on first use:
# name -> (source, classes, is a video set, may be flipped). The class counts
# are the generator's (validation checks a config's against it).
EMBEDDED = {
    "appearance": ("synthetic_appearance", 12, True, True),
    # Flipping a "move left" clip makes it "move right": never flip motion.
    "motion": ("synthetic_motion", 8, True, False),
    "images": ("synthetic_images", 36, False, True),
}
# The generator's default noise amplitude (synthetic.NOISE_AMPLITUDE: the
# demo's data; tests/test_synthetic_data.py pins that they agree).
EMBEDDED_NOISE = 8


def embedded_entry(name: str, *, tiny: bool = False, synthetic: dict | None = None,
                   **overrides) -> ml_collections.ConfigDict:
  """`config.datasets.<name>` for an embedded dataset: the demo's settings.

  Args:
    name: a key of `EMBEDDED`.
    tiny: 20-px, 8-frame datasets of 16 (32 images) / 16 examples, 16-px crops,
      batches of 8 (tests, smoke runs).
    synthetic: changes to how the dataset is generated (`num_train`, `num_test`,
      `num_frames`, `size`, `seed`, `noise`).
    **overrides: any other dataset field.
  """
  source, classes, is_video, flip = EMBEDDED[name]
  fields = dict(
      source=source,
      num_classes=classes,
      num_frames=4 if is_video else 1,
      # Temporal stride: 4 frames at stride 4 span 13 of the 16 stored frames.
      stride=(2 if tiny else 4) if is_video else 1,
      crop_size=16 if tiny else 32,
      flip=flip,
      # A 1-frame image costs 1/4 of a clip, so images get bigger batches.
      batch_size=8 if tiny else (32 if is_video else 64),
      eval_batch_size=8 if tiny else 64,
      eval_split="test",
      shuffle_buffer=256 if tiny else 2048,
      cache=True,                    # small sets: keep the encoded frames in memory
      # How the embedded dataset is generated (frames and pixels as stored).
      synthetic=ml_collections.ConfigDict(dict(
          num_train=(16 if tiny else 1200) * (2 if not is_video else 1),
          num_test=16 if tiny else 300,
          num_frames=8 if tiny else 16,
          size=20 if tiny else 40,
          seed=0,
          # Per-pixel noise amplitude, the difficulty knob (configs/study.py raises it).
          noise=EMBEDDED_NOISE)),
  )
  fields.update(overrides)
  entry = defaults.dataset_config(**fields)
  entry.synthetic.update(synthetic or {})
  return entry


def dataset_entry(name: str, path: str, *, tiny: bool = False, **overrides):
  """`config.datasets.<name>` for a catalog dataset whose data is at `path`.

  For 'tfds' datasets `path` is unused (the TFDS data_dir is config.data_dir).
  `tiny`: 16-px crops, 2-frame clips, 1-2 views, batches of 8 (tests, smoke runs).
  """
  e = CATALOG[name]
  fields = dict(source=e.source, path="" if e.source == "tfds" else path,
                tfds_name=e.tfds_name, num_classes=e.num_classes, num_frames=e.num_frames,
                stride=e.stride, sampling=e.sampling, flip=e.flip, eval_clips=e.eval_clips,
                eval_crops=e.eval_crops, eval_split=e.eval_split,
                eval_short_side=e.eval_short_side, label_smoothing=0.1,
                batch_size=64 if e.num_frames > 1 else 256, eval_batch_size=32)
  if tiny:
    fields.update(num_frames=min(e.num_frames, 2), stride=min(e.stride, 2), crop_size=16,
                  eval_short_side=16 if e.eval_short_side else 0,
                  eval_clips=min(e.eval_clips, 2), batch_size=8, eval_batch_size=4,
                  shuffle_buffer=64)
  fields.update(overrides)
  return defaults.dataset_config(**fields)


def experiment_config(names: list[str], arg: str | None, *, weights=None,
                      mixture: str = "sample") -> ml_collections.ConfigDict:
  """A locked config training on catalog datasets `names` (a config file's get_config).

  Arguments (after the config file's colon): `data=DIR` (one dataset) or
  `<name>=DIR` per dataset (several); for TFDS datasets DIR is the TFDS data_dir.
  `variant` (B/16), `frames` (8), `steps` (30000; 4 with `tiny`), `tiny`.
  """
  dirs = {"data": f"/data/{names[0]}"} if len(names) == 1 else {n: f"/data/{n}" for n in names}
  # steps=0: the recipe's own number, so any explicit value is kept.
  arg = config_args.parse_arg(arg, variant="B/16", frames=8, steps=0, tiny=False, **dirs)
  path = {n: arg.data if len(names) == 1 else arg[n] for n in names}
  config = defaults.base_config()
  config.mixture = mixture
  config.total_steps = arg.steps or (4 if arg.tiny else 30000)
  config.log_every, config.eval_every, config.checkpoint_every = 100, 5000, 1000
  config.model = defaults.model_config(variant=arg.variant, num_frames=arg.frames,
                                               stochastic_depth=0.1)
  # The weights these recipes start from (ViT ImageNet-21k .npz, released
  # TimeSformer checkpoints) expect [0, 1] frames normalised with mean = std = 0.5.
  config.input.mean, config.input.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
  # TimeSformer's fine-tuning recipe: SGD with momentum, cosine decay.
  config.optimizer = defaults.optimizer_config(
      name="sgd", learning_rate=0.005, warmup_steps=1000, weight_decay=1e-4)
  for name in names:
    frames = {} if CATALOG[name].num_frames == 1 else {"num_frames": arg.frames}
    config.datasets[name] = dataset_entry(name, path[name], tiny=arg.tiny,
                                          weight=(weights or {}).get(name, 1.0), **frames)
    if CATALOG[name].source == "tfds":
      config.data_dir = path[name]
  if arg.tiny:
    config.log_every = config.eval_every = config.checkpoint_every = 2
    config.model.update(variant="Mu/8", width=32, depth=1, num_heads=2, mlp_dim=64,
                        image_size=16, num_frames=2, stochastic_depth=0.0,
                        time_embed_init_std=0.02, head_init_std=0.02)
    config.optimizer.warmup_steps = 1
    for ds in config.datasets.values():
      if ds.num_frames > 1:
        ds.num_frames = 2
  config.lock()
  return config
