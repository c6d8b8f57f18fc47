"""Checks a config before anything is built, with errors that teach.

Every error names the field, the bad value, what is allowed and how to fix it,
e.g. ``config.datasets.motion.batch_size = 30: ... Fix: --config.datasets.motion.batch_size=32``.
All problems are collected and reported together so one run shows them all.
"""

from __future__ import annotations

import math

from cover_jax import sharding
from cover_jax.models import timesformer

MIXTURES = ("sample", "all")
OPTIMIZERS = ("adamw", "sgd")


class ConfigError(ValueError):
  """A config value that cannot work; the message says how to fix it."""


def validate_config(config, *, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError listing every problem found in `config`."""
  problems: list[str] = []
  problems += _check_model(config.model)
  problems += _check_training(config)
  problems += _check_mesh(config.mesh_shape, num_devices)
  problems += _check_datasets(config, num_devices, process_count)
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _problem(field: str, value, why: str, fix: str) -> str:
  return f"config.{field} = {value!r}: {why.rstrip('.')}. Fix: {fix}"


def _check_model(model) -> list[str]:
  out = []
  try:
    dims = timesformer.decode_variant(model.variant)
  except ValueError as e:
    return [_problem("model.variant", model.variant, str(e),
                     "--config.model.variant=B/16 (names: " + ", ".join(timesformer.VARIANT_DIMS) + ")")]
  width = model.width or dims.width
  heads = model.num_heads or dims.num_heads
  for field in ("width", "depth", "num_heads", "mlp_dim"):
    if model[field] < 0:
      out.append(_problem(f"model.{field}", model[field], "must be >= 0 (0 takes the variant's value)",
                          f"--config.model.{field}=0"))
  if heads > 0 and width % heads:
    out.append(_problem("model.num_heads", heads, f"must divide the width {width}",
                        f"--config.model.num_heads={_nearest_divisor(width, heads)}"))
  if model.attention_type not in timesformer.ATTENTION_TYPES:
    out.append(_problem("model.attention_type", model.attention_type,
                        f"allowed: {', '.join(timesformer.ATTENTION_TYPES)}",
                        "--config.model.attention_type=divided_space_time"))
  if model.image_size <= 0 or model.image_size % dims.patch_size:
    out.append(_problem("model.image_size", model.image_size,
                        f"must be a positive multiple of the patch size {dims.patch_size} "
                        f"(variant {model.variant})",
                        f"--config.model.image_size={_round_to(model.image_size, dims.patch_size)}"))
  if model.num_frames < 1:
    out.append(_problem("model.num_frames", model.num_frames, "must be >= 1",
                        "--config.model.num_frames=8"))
  for field in ("dropout", "attention_dropout", "stochastic_depth"):
    if not 0.0 <= model[field] < 1.0:
      out.append(_problem(f"model.{field}", model[field], "must be in [0, 1)",
                          f"--config.model.{field}=0.1"))
  for field in ("time_embed_init_std", "head_init_std"):
    if model.get(field, 0.0) < 0:
      out.append(_problem(f"model.{field}", model[field], "must be >= 0 (0: zeros)",
                          f"--config.model.{field}=0.02"))
  if model.dtype not in ("float32", "bfloat16", "float16"):
    out.append(_problem("model.dtype", model.dtype, "allowed: float32, bfloat16, float16",
                        "--config.model.dtype=float32"))
  return out


def _check_training(config) -> list[str]:
  out = []
  if config.mixture not in MIXTURES:
    out.append(_problem("mixture", config.mixture, f"allowed: {', '.join(MIXTURES)}",
                        "--config.mixture=sample"))
  if config.total_steps <= 0:
    out.append(_problem("total_steps", config.total_steps, "must be > 0", "--config.total_steps=1000"))
  for field in ("log_every", "eval_every", "checkpoint_every"):
    if config[field] < 0:
      out.append(_problem(field, config[field], "must be >= 0 (0 disables)", f"--config.{field}=0"))
  if config.keep_checkpoints < 1:
    out.append(_problem("keep_checkpoints", config.keep_checkpoints, "must be >= 1",
                        "--config.keep_checkpoints=2"))
  opt = config.optimizer
  if opt.name not in OPTIMIZERS:
    out.append(_problem("optimizer.name", opt.name, f"allowed: {', '.join(OPTIMIZERS)}",
                        "--config.optimizer.name=adamw"))
  if opt.learning_rate <= 0:
    out.append(_problem("optimizer.learning_rate", opt.learning_rate, "must be > 0",
                        "--config.optimizer.learning_rate=1e-3"))
  if not 0 <= opt.warmup_steps < max(config.total_steps, 1):
    out.append(_problem("optimizer.warmup_steps", opt.warmup_steps,
                        f"must be in [0, total_steps={config.total_steps})",
                        f"--config.optimizer.warmup_steps={config.total_steps // 10}"))
  if opt.grad_clip_norm < 0 or opt.weight_decay < 0:
    out.append(_problem("optimizer.grad_clip_norm/weight_decay",
                        (opt.grad_clip_norm, opt.weight_decay), "must be >= 0 (0 disables)",
                        "--config.optimizer.grad_clip_norm=1.0"))
  if len(config.input.mean) != 3 or len(config.input.std) != 3 or min(config.input.std) <= 0:
    out.append(_problem("input.mean/std", (config.input.mean, config.input.std),
                        "need 3 channel values each, std > 0",
                        "--config.input.std='(0.225, 0.225, 0.225)'"))
  return out


def _check_mesh(mesh_shape, num_devices: int) -> list[str]:
  try:
    sharding.resolve_mesh_shape(mesh_shape, num_devices)
  except ValueError as e:
    return [_problem("mesh_shape", tuple(mesh_shape), str(e), "--config.mesh_shape='(-1, 1, 1)'")]
  return []


def _check_datasets(config, num_devices: int, process_count: int) -> list[str]:
  from cover_jax.data import builders  # imports TFDS; keep model-only users light.

  if not config.datasets:
    return [_problem("datasets", {}, "no dataset to train on",
                     "list at least one dataset in the config")]
  out = []
  weights = {name: ds.weight for name, ds in config.datasets.items()}
  for name, ds in config.datasets.items():
    out += _check_dataset(f"datasets.{name}", ds, builders, config.model, num_devices, process_count)
  for name, weight in weights.items():
    if weight < 0:
      out.append(_problem(f"datasets.{name}.weight", weight, "sampling weights must be >= 0",
                          f"--config.datasets.{name}.weight=1.0"))
  if all(w <= 0 for w in weights.values()):
    out.append(_problem("datasets.*.weight", weights, "at least one weight must be > 0",
                        f"--config.datasets.{next(iter(weights))}.weight=1.0"))
  return out


def _check_dataset(field, ds, builders, model, num_devices, process_count) -> list[str]:
  if ds.source not in builders.SOURCES:
    return [_problem(f"{field}.source", ds.source, f"unknown source; known: {sorted(builders.SOURCES)}",
                     f"--config.{field}.source={sorted(builders.SOURCES)[0]}")]
  out = []
  is_video = builders.IS_VIDEO[ds.source]
  expected_classes = builders.num_classes(ds.source)
  if ds.num_classes != expected_classes:
    out.append(_problem(f"{field}.num_classes", ds.num_classes,
                        f"source {ds.source} has {expected_classes} classes",
                        f"--config.{field}.num_classes={expected_classes}"))
  devices_per_batch = math.lcm(num_devices, process_count)
  for bs_field in ("batch_size", "eval_batch_size"):
    bs = ds[bs_field]
    if bs <= 0 or bs % devices_per_batch:
      out.append(_problem(f"{field}.{bs_field}", bs,
                          f"must be a positive multiple of the {num_devices} device(s) and "
                          f"{process_count} process(es) so every device gets an equal share",
                          f"--config.{field}.{bs_field}={_round_to(bs, devices_per_batch)}"))
  out += _check_frames(field, ds, is_video)
  patch = timesformer.decode_variant(model.variant).patch_size if _variant_ok(model) else 1
  stored = ds.synthetic.size if "synthetic" in ds else None
  if ds.crop_size <= 0 or ds.crop_size % patch:
    out.append(_problem(f"{field}.crop_size", ds.crop_size,
                        f"must be a positive multiple of the patch size {patch}",
                        f"--config.{field}.crop_size={_round_to(ds.crop_size, patch)}"))
  elif stored is not None and ds.crop_size > stored:
    out.append(_problem(f"{field}.crop_size", ds.crop_size,
                        f"larger than the stored frames ({stored} px)",
                        f"--config.{field}.crop_size={stored - stored % patch}"))
  if not 0.0 <= ds.label_smoothing < 1.0:
    out.append(_problem(f"{field}.label_smoothing", ds.label_smoothing, "must be in [0, 1)",
                        f"--config.{field}.label_smoothing=0.1"))
  return out


def _check_frames(field, ds, is_video: bool) -> list[str]:
  if not is_video:
    if ds.num_frames != 1 or ds.stride != 1:
      return [_problem(f"{field}.num_frames/stride", (ds.num_frames, ds.stride),
                       f"{ds.source} holds images, which enter the model as 1-frame videos",
                       f"--config.{field}.num_frames=1 --config.{field}.stride=1")]
    return []
  if ds.num_frames < 1 or ds.stride < 1:
    return [_problem(f"{field}.num_frames/stride", (ds.num_frames, ds.stride),
                     "both must be >= 1",
                     f"--config.{field}.num_frames={max(ds.num_frames, 1)} "
                     f"--config.{field}.stride={max(ds.stride, 1)}")]
  span = (ds.num_frames - 1) * ds.stride + 1
  if "synthetic" in ds and span > ds.synthetic.num_frames:
    # Looping is for real videos shorter than a clip; synthetic motion would
    # wrap around and contradict its own label.
    max_stride = max((ds.synthetic.num_frames - 1) // max(ds.num_frames - 1, 1), 1)
    return [_problem(f"{field}.num_frames/stride", (ds.num_frames, ds.stride),
                     f"a clip spans {span} frames but the synthetic videos have "
                     f"{ds.synthetic.num_frames}",
                     f"--config.{field}.stride={max_stride} or raise "
                     f"--config.{field}.synthetic.num_frames to {span}")]
  return []


def _variant_ok(model) -> bool:
  try:
    timesformer.decode_variant(model.variant)
    return True
  except ValueError:
    return False


def _round_to(value: int, multiple: int) -> int:
  return max(multiple, int(round(value / multiple)) * multiple)


def _nearest_divisor(n: int, near: int) -> int:
  return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - near))
