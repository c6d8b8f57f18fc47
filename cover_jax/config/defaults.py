"""The fields every experiment config has, with their defaults, in one place.

Config files (`configs/*.py`) start from `base_config()`, change what their
experiment needs, add their datasets and lock the result. A new option is
added here once, with a comment, and every config (and `--config.x=...` on the
command line) gets it. Helpers return fresh ConfigDicts and never mutate their
arguments.
"""

from __future__ import annotations

import ml_collections

from cover_jax.parallel import sharding


def base_config() -> ml_collections.ConfigDict:
  """All top-level fields with defaults; `datasets` is left empty (unlocked)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data_dir = ""  # "" -> $TFDS_DATA_DIR, else ~/tensorflow_datasets
  config.mixture = "sample"  # 'sample': one dataset per step by weight; 'all': every dataset
  config.total_steps = 1000
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 2
  config.mesh_shape = (-1, 1, 1)  # (data, fsdp, tensor); -1: remaining devices
  # Logical axis -> mesh axes, '+'-joined ('' = replicated); defaults from the
  # one table in sharding.py, e.g. --config.axis_rules.embed='' turns FSDP off.
  config.axis_rules = ml_collections.ConfigDict(sharding.rules_to_config())
  # Split every batch into this many micro-batches and accumulate gradients
  # (grad_accum.py): the same step with 1/k of the activation memory.
  config.grad_accum_steps = 1
  config.model = model_config()
  config.optimizer = optimizer_config()
  config.input = ml_collections.ConfigDict(dict(
      mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225),
      # Every global batch is this many shard batches, read by the processes
      # that own them (input/shards.py): a fixed number makes the data
      # independent of the process count. 0: one shard per process.
      shards=0))
  config.datasets = ml_collections.ConfigDict()
  config.nonfinite = nonfinite_config()
  # Fine-tuning (cover_jax/pretrained/): weights to start from when the workdir
  # has no checkpoint yet: a ViT / big_vision .npz, an official TimeSformer
  # .pyth, a HuggingFace TimeSformer (directory or weights file), or an Orbax
  # checkpoint of ours (a run's workdir or a `convert` output). "" = from scratch.
  config.init_from = ""
  config.init = init_config()
  return config


def init_config(**overrides) -> ml_collections.ConfigDict:
  """How `config.init_from` is loaded (cover_jax/pretrained/loader.py)."""
  fields = dict(
      # auto | vit_npz | big_vision_npz | timesformer_pyth | hf | orbax
      format="auto",
      # matching: a dataset gets the checkpoint head of its name (or head_map's)
      # when the class counts agree, else a new head; none: all heads new;
      # all: every dataset must get a checkpoint head.
      heads="matching",
      # 'DATASET=CHECKPOINT_HEAD,...'; single-head checkpoints (ViT, TimeSformer,
      # HuggingFace) call theirs 'head', e.g. 'k400=head'.
      head_map="",
      # auto: nearest for TimeSformer checkpoints (as the official model does at
      # run time), bilinear for ViT (big_vision); or force 'nearest' / 'bilinear'.
      posemb_resize="auto",
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def nonfinite_config(**overrides) -> ml_collections.ConfigDict:
  """What a NaN/Inf loss or gradient does (cover_jax/train/nonfinite.py)."""
  fields = dict(
      # 'stop': end the run at the first non-finite step (exit status 3), the
      # last good checkpoint stays the latest; 'skip': drop that step's update
      # inside the step, count it, and go on.
      policy="stop",
      # 'skip': stop anyway after this many skipped steps in a row (diverged).
      max_consecutive_skips=10,
      # Debug/testing: the loss of this step (0-based) is made NaN inside the
      # jitted step, gradient included. -1: never.
      inject_at_step=-1)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The backbone and heads; 0 for width/depth/num_heads/mlp_dim takes the variant's value."""
  fields = dict(
      variant="B/16", width=0, depth=0, num_heads=0, mlp_dim=0,
      image_size=224, num_frames=8, attention_type="divided_space_time",
      dropout=0.0, attention_dropout=0.0, stochastic_depth=0.0, dtype="float32",
      # Official TimeSformer: zeros. From scratch a small random init also works.
      time_embed_init_std=0.0,
      # 0: zero heads (big_vision/scenic fine-tuning); the official TimeSformer
      # uses 0.02, and training from scratch needs a non-zero head (models/cover.py).
      head_init_std=0.0,
      # Memory knobs (models/block_stack.py). remat per block: 'none' | 'full'
      # (keep block inputs only) | 'dots' (keep weight-matmul outputs).
      remat="none",
      # Stack the blocks' parameters and lax.scan over them: compile time
      # independent of depth; checkpoints differ in layout (python -m cover_jax.checkpoint.relayout converts).
      scan_layers=False,
      # 'auto' | 'xla' | 'cudnn' (config/allowed.py ATTENTION_IMPLS): auto
      # uses cuDNN flash attention on GPU in bfloat16/float16, einsums elsewhere.
      attention_impl="auto")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def augment_config(**overrides) -> ml_collections.ConfigDict:
  """A dataset's training augmentation (`config.datasets.<name>.augment`).

  The crop, RandAugment and flip act on tf.data (input/augment.py); mixup and
  cutmix act on device in the train step (mixup.py). The flip policy is the
  dataset's own `flip` field. The defaults are the plain random crop, nothing else.
  """
  fields = dict(
      # crop: a random crop_size window of the stored frames;
      # scale_jitter: short side resized to a random size in short_side_range,
      #   then a random crop (SlowFast/TimeSformer: (256, 320) -> 224);
      # random_resized_crop: a box of random area (area_range, fraction of the
      #   frame) and aspect ratio (aspect_ratio_range, w/h), resized to crop_size;
      # inception: the same ranges through tf.image's sample_distorted_bounding_box
      #   (big_vision's inception_crop, for images; big_vision uses area (0.05, 1)).
      kind="crop",
      short_side_range=(256, 320),
      area_range=(0.08, 1.0),
      aspect_ratio_range=(3 / 4, 4 / 3),
      # RandAugment: this many ops per clip (0: off), all frames alike, at this
      # magnitude on the paper's 0..10 scale (9 is the common ImageNet setting).
      randaugment_layers=0,
      randaugment_magnitude=9.0,
      # Mixup / cutmix within each batch, in the train step. alpha 0 turns one
      # off. mix_prob: probability that a batch is mixed at all; switch_prob:
      # probability of cutmix rather than mixup when both are on (timm's
      # defaults for video: mixup 0.8, cutmix 1.0, switch 0.5).
      mixup_alpha=0.0,
      cutmix_alpha=0.0,
      mix_prob=1.0,
      switch_prob=0.5)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def augment_of(dataset_config) -> ml_collections.ConfigDict:
  """A dataset's `augment` block; the defaults for configs saved before it existed."""
  return dataset_config.get("augment") or augment_config()


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """Warm-up + cosine schedule, AdamW or SGD, global-norm clipping (optim.py)."""
  fields = dict(
      name="adamw", learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=100,
      weight_decay=0.05, b1=0.9, b2=0.999, momentum=0.9, nesterov=False,
      grad_clip_norm=1.0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def dataset_config(**overrides) -> ml_collections.ConfigDict:
  """One entry of `config.datasets`: where its data is and how it is read and evaluated.

  Sources (input/sources.py): an embedded synthetic set ('synthetic_appearance',
  'synthetic_motion', 'synthetic_images'); 'dmvr' (DMVR-format SequenceExample
  records: our prepare tool's or DMVR's own); 'tfds' (any prepared TFDS dataset
  by `tfds_name` in config.data_dir, e.g. 'cover_kinetics/k400', 'imagenet2012';
  never downloaded at run time); 'image_folder' (`<path>/<split>/<class>/<image>`,
  or `<path>/<class>/<image>` for a split without its own folder); 'image_records'
  (tf.train.Example with image/encoded + image/class/label).
  """
  fields = dict(
      source="dmvr",
      path="",                 # dmvr / image_folder / image_records: the dataset directory
      tfds_name="",            # tfds: 'name' or 'name/config' (e.g. 'cover_kinetics/k400')
      # dmvr / image_records: record files of a split, relative to `path`.
      file_pattern="{split}-*",
      train_split="train",
      eval_split="test",       # prepared Kinetics/SSv2/MiT and ImageNet: 'validation'
      # image_records: added to image/class/label (-1 for TF-slim ImageNet records,
      # whose labels start at 1).
      label_offset=0,
      num_classes=0,           # must match the class list (classes.txt / TFDS / folders)
      num_frames=8,            # frames per clip; 1 for images
      stride=1,                # temporal stride between the clip's frames (sampling='stride')
      # 'stride': T frames at `stride` from a random (train) / evenly spaced (eval)
      # start; 'segment': one frame from each of T equal segments of the whole
      # video (TSN style; TimeSformer's SSv2 sampling).
      sampling="stride",
      crop_size=224,           # training crop and eval crops (the model's resolution)
      flip=True,               # random horizontal flip in training; never for SSv2-like data
      batch_size=64,           # global training batch
      eval_batch_size=64,      # global eval batch in VIDEOS (each gives eval_clips*eval_crops views)
      eval_clips=1,            # K temporal clips per test video, evenly spaced
      eval_crops=1,            # S spatial crops per clip (1 centre, or 3 along the long side)
      eval_short_side=0,       # eval frames resized to this short side first; 0: as stored
      weight=1.0,              # mixture sampling weight (loss weight in 'all' mode)
      label_smoothing=0.0,
      shuffle_buffer=2048,     # records (still JPEG-encoded) in the shuffle buffer
      cache=False,             # keep the (encoded) records in memory: small sets only
      # Training augmentation and mixup/cutmix (input/augment.py, mixup.py); the
      # default is the plain random crop (+ flip where `flip` allows it).
      augment=augment_config(),
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)
