"""The fields every experiment config has, with their defaults, in one place.

Config files (`configs/*.py`) start from `base_config()`, change what their
experiment needs, add their datasets and lock the result. A new option is
added here once, with a comment, and every config (and `--config.x=...` on the
command line) gets it. Helpers return fresh ConfigDicts and never mutate their
arguments.
"""

from __future__ import annotations

import ml_collections

from cover_jax import sharding


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
      # that own them (data/shards.py): a fixed number makes the data
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
  """What a NaN/Inf loss or gradient does (cover_jax/nonfinite.py)."""
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
      # independent of depth; checkpoints differ in layout (convert_checkpoint.py).
      scan_layers=False,
      # 'auto' | 'xla' | 'cudnn' (models/timesformer.py ATTENTION_IMPLS): auto
      # uses cuDNN flash attention on GPU in bfloat16/float16, einsums elsewhere.
      attention_impl="auto")
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """Warm-up + cosine schedule, AdamW or SGD, global-norm clipping (optim.py)."""
  fields = dict(
      name="adamw", learning_rate=1e-3, end_learning_rate=1e-5, warmup_steps=100,
      weight_decay=0.05, b1=0.9, b2=0.999, momentum=0.9, nesterov=False,
      grad_clip_norm=1.0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)
