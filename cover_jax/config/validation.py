"""Checks a config before anything is built, with errors that teach.

Every error names the field, the bad value, what is allowed and how to fix it,
e.g. ``config.datasets.motion.batch_size = 30: ... Fix: --config.datasets.motion.batch_size=32``.
All problems are collected and reported together so one run shows them all.
"""

from __future__ import annotations

import math

from cover_jax.config import allowed
from cover_jax.parallel import sharding
from cover_jax.models import timesformer



class ConfigError(ValueError):
  """A config value that cannot work; the message says how to fix it."""


def validate_config(config, *, num_devices: int, process_count: int = 1) -> None:
  """Raises ConfigError listing every problem found in `config`."""
  problems: list[str] = []
  problems += _check_model(config.model)
  problems += _check_training(config)
  problems += _check_mesh(config.mesh_shape, num_devices)
  problems += _check_scale(config, num_devices, model_ok=not problems)
  problems += _check_input_shards(config, process_count)
  problems += _check_datasets(config, num_devices, process_count)
  problems += _check_nonfinite(config)
  problems += _check_init(config)
  if problems:
    raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _problem(field: str, value, why: str, fix: str) -> str:
  return f"config.{field} = {value!r}: {why.rstrip('.')}. Fix: {fix}"


def _check_attention_impl(model, head_dim: int) -> list[str]:
  impl = model.get("attention_impl", "auto")
  if impl not in allowed.ATTENTION_IMPLS:
    return [_problem("model.attention_impl", impl,
                     f"allowed: {', '.join(allowed.ATTENTION_IMPLS)}",
                     "--config.model.attention_impl=auto")]
  if impl != "cudnn" or not head_dim:
    return []
  problems = timesformer.cudnn_attention_problems(model.dtype, head_dim,
                                                  model.attention_dropout)
  return [_problem("model.attention_impl", impl, "cuDNN attention cannot run: "
                   + "; ".join(problems), "--config.model.attention_impl=auto")] if problems else []


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
  if model.attention_type not in allowed.ATTENTION_TYPES:
    out.append(_problem("model.attention_type", model.attention_type,
                        f"allowed: {', '.join(allowed.ATTENTION_TYPES)}",
                        "--config.model.attention_type=divided_space_time"))
  out += _check_attention_impl(model, width // heads if heads > 0 else 0)
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
  if model.dtype not in allowed.DTYPES:
    out.append(_problem("model.dtype", model.dtype, f"allowed: {', '.join(allowed.DTYPES)}",
                        "--config.model.dtype=float32"))
  return out


def _check_training(config) -> list[str]:
  out = []
  if config.mixture not in allowed.MIXTURES:
    out.append(_problem("mixture", config.mixture, f"allowed: {', '.join(allowed.MIXTURES)}",
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
  if opt.name not in allowed.OPTIMIZERS:
    out.append(_problem("optimizer.name", opt.name, f"allowed: {', '.join(allowed.OPTIMIZERS)}",
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


def _check_scale(config, num_devices: int, model_ok: bool) -> list[str]:
  """Sharding rules, memory knobs, and parameters that the mesh must split evenly."""
  out = []
  for name, text in config.axis_rules.items():
    try:
      sharding.rules_from_config({name: text})
    except ValueError as e:
      out.append(_problem(f"axis_rules.{name}", text, str(e),
                          f"--config.axis_rules.{name}=" + (
                              sharding.rules_to_config().get(name) or "''")))
  model = config.model
  if model.remat not in allowed.REMAT:
    out.append(_problem("model.remat", model.remat,
                        f"allowed: {', '.join(allowed.REMAT)}",
                        "--config.model.remat=full"))
  k = config.grad_accum_steps
  if k < 1:
    out.append(_problem("grad_accum_steps", k, "must be >= 1", "--config.grad_accum_steps=1"))
  else:
    for name, ds in config.datasets.items():
      if ds.batch_size % (k * num_devices):
        out.append(_problem(
            f"datasets.{name}.batch_size", ds.batch_size,
            f"with grad_accum_steps={k} every micro-batch ({ds.batch_size}/{k}) must split "
            f"evenly over the {num_devices} device(s)",
            f"--config.datasets.{name}.batch_size={_round_to(ds.batch_size, k * num_devices)}"))
  if model_ok and not out:
    out += _check_parameter_split(config, num_devices,
                                  sharding.rules_from_config(config.axis_rules))
  return out


def _check_input_shards(config, process_count: int) -> list[str]:
  shards = config.input.shards
  if shards < 0 or (shards and shards % process_count):
    return [_problem("input.shards", shards,
                     f"must be 0 (one per process) or a multiple of the {process_count} process(es)",
                     f"--config.input.shards={_round_to(max(shards, 1), process_count)}")]
  out = []
  for name, ds in config.datasets.items():
    if shards and ds.batch_size % shards:
      out.append(_problem(f"datasets.{name}.batch_size", ds.batch_size,
                          f"must split evenly into input.shards={shards} shard batches",
                          f"--config.datasets.{name}.batch_size={_round_to(ds.batch_size, shards)}"))
  return out


def _check_parameter_split(config, num_devices: int, rules) -> list[str]:
  """Every parameter dimension that the rules shard must divide by its mesh axes' size."""
  from flax import nnx
  from cover_jax.models import cover

  mesh_sizes = dict(zip(sharding.MESH_AXES,
                        sharding.resolve_mesh_shape(config.mesh_shape, num_devices)))
  if all(size == 1 for name, size in mesh_sizes.items() if name != "data"):
    return []  # data parallel only: parameters are replicated
  classes = {name: ds.num_classes for name, ds in config.datasets.items()}
  params = nnx.state(nnx.eval_shape(lambda: cover.build_model(config.model, classes,
                                                              nnx.Rngs(params=0))), nnx.Param)
  uneven = sharding.indivisible_dims(params, nnx.get_partition_spec(params), mesh_sizes, rules)
  if not uneven:
    return []
  return [_problem("mesh_shape", tuple(config.mesh_shape),
                   f"{len(uneven)} parameter dimension(s) do not split evenly over the mesh, "
                   f"e.g. {'; '.join(uneven[:3])}",
                   "choose mesh sizes that divide the model's width / num_heads / mlp_dim, "
                   "or map that logical axis elsewhere (--config.axis_rules.<name>='')")]


def _check_datasets(config, num_devices: int, process_count: int) -> list[str]:
  from cover_jax.prepare import embedded_builders  # imports TFDS; keep model-only users light.

  if not config.datasets:
    return [_problem("datasets", {}, "no dataset to train on",
                     "list at least one dataset in the config")]
  out = []
  weights = {name: ds.weight for name, ds in config.datasets.items()}
  for name, ds in config.datasets.items():
    out += _check_dataset(f"datasets.{name}", ds, embedded_builders, config.model, num_devices, process_count)
  for name, weight in weights.items():
    if weight < 0:
      out.append(_problem(f"datasets.{name}.weight", weight, "sampling weights must be >= 0",
                          f"--config.datasets.{name}.weight=1.0"))
  if all(w <= 0 for w in weights.values()):
    out.append(_problem("datasets.*.weight", weights, "at least one weight must be > 0",
                        f"--config.datasets.{next(iter(weights))}.weight=1.0"))
  return out


def _check_dataset(field, ds, embedded_builders, model, num_devices, process_count) -> list[str]:
  from cover_jax.input import sources

  if ds.source not in sources.SOURCES:
    return [_problem(f"{field}.source", ds.source,
                     f"unknown source; known: {list(sources.SOURCES)}",
                     f"--config.{field}.source=dmvr")]
  out = _check_source_fields(field, ds, embedded_builders)
  # Images are 1-frame videos; a 'tfds' dataset's kind is known once it is opened.
  is_video = {"dmvr": True, "image_folder": False, "image_records": False}.get(
      ds.source, embedded_builders.IS_VIDEO.get(ds.source))
  devices_per_batch = math.lcm(num_devices, process_count)
  for bs_field in ("batch_size", "eval_batch_size"):
    bs = ds[bs_field]
    if bs <= 0 or bs % devices_per_batch:
      out.append(_problem(f"{field}.{bs_field}", bs,
                          f"must be a positive multiple of the {num_devices} device(s) and "
                          f"{process_count} process(es) so every device gets an equal share",
                          f"--config.{field}.{bs_field}={_round_to(bs, devices_per_batch)}"))
  if is_video is not None:
    out += _check_frames(field, ds, is_video)
  out += _check_eval_views(field, ds)
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
  if "augment" in ds:
    out += _check_augment(f"{field}.augment", ds.augment, ds.crop_size)
  return out


def _check_augment(field, aug, crop_size: int) -> list[str]:
  """A dataset's `augment` fields (input/augment.py, mixup.py)."""

  out = []
  if aug.kind not in allowed.AUGMENT_KINDS:
    out.append(_problem(f"{field}.kind", aug.kind, f"allowed: {', '.join(allowed.AUGMENT_KINDS)}",
                        f"--config.{field}.kind=crop"))
  low, high = _pair(aug.short_side_range)
  if aug.kind == "scale_jitter" and not crop_size <= low <= high:
    out.append(_problem(f"{field}.short_side_range", aug.short_side_range,
                        f"need crop_size ({crop_size}) <= min <= max: the resized short side "
                        "must hold the crop",
                        f"--config.{field}.short_side_range='({crop_size * 8 // 7}, "
                        f"{crop_size * 10 // 7})'"))
  low, high = _pair(aug.area_range)
  if not 0 < low <= high <= 1:
    out.append(_problem(f"{field}.area_range", aug.area_range,
                        "fractions of the frame's area with 0 < min <= max <= 1",
                        f"--config.{field}.area_range='(0.08, 1.0)'"))
  low, high = _pair(aug.aspect_ratio_range)
  if not 0 < low <= high:
    out.append(_problem(f"{field}.aspect_ratio_range", aug.aspect_ratio_range,
                        "width/height ratios with 0 < min <= max",
                        f"--config.{field}.aspect_ratio_range='(0.75, 1.333)'"))
  if aug.randaugment_layers < 0:
    out.append(_problem(f"{field}.randaugment_layers", aug.randaugment_layers,
                        "must be >= 0 (0: RandAugment off)",
                        f"--config.{field}.randaugment_layers=2"))
  if not 0 <= aug.randaugment_magnitude <= allowed.RANDAUGMENT_MAX_MAGNITUDE:
    out.append(_problem(f"{field}.randaugment_magnitude", aug.randaugment_magnitude,
                        "must be in [0, 10] (the RandAugment paper's scale)",
                        f"--config.{field}.randaugment_magnitude=9"))
  for name in ("mixup_alpha", "cutmix_alpha"):
    if aug[name] < 0:
      out.append(_problem(f"{field}.{name}", aug[name], "must be >= 0 (0: off)",
                          f"--config.{field}.{name}=0.8"))
  for name in ("mix_prob", "switch_prob"):
    if not 0 <= aug[name] <= 1:
      out.append(_problem(f"{field}.{name}", aug[name], "a probability must be in [0, 1]",
                          f"--config.{field}.{name}=0.5"))
  return out


def _pair(value) -> tuple[float, float]:
  """(min, max) of a 2-element range field; (nan, nan) when malformed, so checks fail."""
  try:
    low, high = value
    return float(low), float(high)
  except (TypeError, ValueError):
    return math.nan, math.nan


def _check_source_fields(field, ds, embedded_builders) -> list[str]:
  """Per-source fields: synthetic class counts, a path or a TFDS name, a class count."""
  if ds.source in embedded_builders.SOURCES:
    expected = embedded_builders.num_classes(ds.source)
    if ds.num_classes != expected:
      return [_problem(f"{field}.num_classes", ds.num_classes,
                       f"source {ds.source} has {expected} classes",
                       f"--config.{field}.num_classes={expected}")]
    return _check_synthetic(f"{field}.synthetic", ds.get("synthetic"))
  out = []
  if ds.source == "tfds" and not ds.tfds_name:
    out.append(_problem(f"{field}.tfds_name", ds.tfds_name, "source 'tfds' needs a dataset name",
                        f"--config.{field}.tfds_name=imagenet2012"))
  if ds.source != "tfds" and not ds.path:
    out.append(_problem(f"{field}.path", ds.path, f"source {ds.source!r} reads a directory",
                        f"--config.{field}.path=/data/<dataset>, or the config file's data= "
                        "argument"))
  if ds.num_classes < 1:
    out.append(_problem(f"{field}.num_classes", ds.num_classes, "must be the dataset's class "
                        "count", f"--config.{field}.num_classes=400"))
  return out


def _check_synthetic(field, syn) -> list[str]:
  """How an embedded dataset is generated (embedded_builders.SyntheticConfig)."""
  from cover_jax.prepare import synthetic  # pylint: disable=import-outside-toplevel

  if syn is None:
    return [_problem(field, None, "an embedded dataset needs its generation settings",
                     "start from configs/demo.py's datasets")]
  out = [_problem(f"{field}.{name}", syn[name], "must be a positive integer",
                  f"--config.{field}.{name}=16")
         for name in ("num_train", "num_test", "size", "num_frames") if syn[name] < 1]
  noise = syn.get("noise", synthetic.NOISE_AMPLITUDE)
  if not 0 <= noise <= synthetic.MAX_NOISE:
    out.append(_problem(f"{field}.noise", noise,
                        f"the per-pixel noise amplitude must be in [0, {synthetic.MAX_NOISE}]",
                        f"--config.{field}.noise={synthetic.NOISE_AMPLITUDE}"))
  return out


def _check_eval_views(field, ds) -> list[str]:
  out = []
  if ds.eval_clips < 1:
    out.append(_problem(f"{field}.eval_clips", ds.eval_clips, "must be >= 1",
                        f"--config.{field}.eval_clips=1"))
  if ds.eval_crops not in allowed.EVAL_CROPS:
    out.append(_problem(f"{field}.eval_crops", ds.eval_crops, "must be 1 (centre) or 3 (along "
                        "the long side)", f"--config.{field}.eval_crops=3"))
  if ds.sampling not in allowed.SAMPLINGS:
    out.append(_problem(f"{field}.sampling", ds.sampling, f"allowed: {', '.join(allowed.SAMPLINGS)}",
                        f"--config.{field}.sampling=stride"))
  elif ds.sampling == "segment" and ds.eval_clips != 1:
    out.append(_problem(f"{field}.eval_clips", ds.eval_clips, "segment sampling covers the whole "
                        "video with one clip", f"--config.{field}.eval_clips=1"))
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


def _check_nonfinite(config) -> list[str]:
  nf = config.nonfinite
  out = []
  if nf.policy not in allowed.NONFINITE_POLICIES:
    out.append(_problem("nonfinite.policy", nf.policy, f"allowed: {', '.join(allowed.NONFINITE_POLICIES)}",
                        "--config.nonfinite.policy=stop"))
  if nf.max_consecutive_skips < 1:
    out.append(_problem("nonfinite.max_consecutive_skips", nf.max_consecutive_skips,
                        "must be >= 1", "--config.nonfinite.max_consecutive_skips=10"))
  if nf.inject_at_step < -1:
    out.append(_problem("nonfinite.inject_at_step", nf.inject_at_step,
                        "must be a step number >= 0, or -1 (never)",
                        "--config.nonfinite.inject_at_step=-1"))
  return out


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


def _check_init(config) -> list[str]:
  """`init_from` and how to load it (cover_jax/pretrained/)."""
  from cover_jax.pretrained import fit  # pylint: disable=import-outside-toplevel

  if "init" not in config:
    return []
  out, init = [], config.init
  # The path's existence is checked when the run starts (and only if the
  # workdir has no checkpoint to resume from), as for datasets' paths.
  if init.format not in ("auto",) + allowed.INIT_FORMATS:
    out.append(_problem("init.format", init.format, f"allowed: auto, {', '.join(allowed.INIT_FORMATS)}",
                        "--config.init.format=auto"))
  if init.heads not in allowed.INIT_HEAD_MODES:
    out.append(_problem("init.heads", init.heads, f"allowed: {', '.join(allowed.INIT_HEAD_MODES)}",
                        "--config.init.heads=matching"))
  if init.posemb_resize not in ("auto",) + allowed.POSEMB_RESIZE:
    out.append(_problem("init.posemb_resize", init.posemb_resize,
                        f"allowed: auto, {', '.join(allowed.POSEMB_RESIZE)}", "--config.init.posemb_resize=auto"))
  try:
    unknown = sorted(set(fit.parse_head_map(init.head_map)) - set(config.datasets))
    if unknown:
      out.append(_problem("init.head_map", init.head_map, f"names dataset(s) {unknown} that the "
                          f"config does not have (datasets: {sorted(config.datasets)})",
                          f"--config.init.head_map={next(iter(config.datasets), 'k400')}=head"))
  except ValueError as e:
    out.append(_problem("init.head_map", init.head_map, str(e), "--config.init.head_map=k400=head"))
  return out
