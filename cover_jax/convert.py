r"""Converts a released checkpoint into an Orbax checkpoint of ours, plus the config that fits it.

  python -m cover_jax.convert --input=TimeSformer_divST_8x32_224_K400.pyth --output=/ckpt/tsf_k400
  python -m cover_jax.convert --input=/models/timesformer-base-finetuned-k400 --output=/ckpt/hf_k400 \
      --dataset=k400
  python -m cover_jax.convert --input=ViT-B_16.npz --output=/ckpt/vit_b16 --num_frames=8

Formats (--format, default auto): vit_npz, big_vision_npz, timesformer_pyth
(a .pyth/.pth, or the official state dict as .npz), hf (a HuggingFace model
directory or its model.safetensors / pytorch_model.bin with config.json
beside). The output directory then holds

  checkpoints/0/   the parameters (Orbax; meta: the config, class names, provenance)
  config.json      the config: model dimensions, input normalisation, and one
                   `datasets` entry per head (classes, frames, stride, crop)

and is accepted by `python -m cover_jax.predict --checkpoint=DIR` and by
`--config.init_from=DIR` in any training config. The model is read off the
checkpoint: dimensions from the shapes, heads / frames / size / class names
from what comes with it (HF config.json, the .pyth's cfg), each overridable
with a flag. A ViT image checkpoint becomes a TimeSformer as for fine-tuning
(temporal attention copied from spatial, temporal_fc and time embedding
zero); its ImageNet head is kept only if no pre_logits layer precedes it.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command: no garbage collection during the imports below
  from cover_jax.train import exits as _exits
  _exits.hold_garbage_collection()  # until they are done (train/exits.py)

import json
import os
import sys

from absl import app, flags, logging

from cover_jax.checkpoint import manager
from cover_jax.config import defaults
from cover_jax.models import cover, timesformer
from cover_jax.pretrained import files, fit, loader
from cover_jax.pretrained.weights import PretrainedWeights, checkpoint_dims
from cover_jax.metrics import run_log

# TimeSformer's Kinetics sampling (8 frames, 32 apart at 30 fps) where a checkpoint says nothing.
DEFAULT_STRIDE, DEFAULT_FPS = 32, 30.0


def model_config_for(weights: PretrainedWeights, *, num_frames=None, image_size=None):
  """A `config.model` whose dimensions fit `weights` (see the module docstring)."""
  dims = checkpoint_dims(weights.params)
  if dims is None:
    raise ValueError(f"{weights.path}: no patch embedding found; not a model checkpoint")
  variant, overrides = _variant_for(dims, timesformer.VARIANT_DIMS)
  info = weights.info
  grid = int(round((weights.params["backbone/pos_embed"].shape[0] - 1) ** 0.5))
  time = weights.params.get("backbone/time_embed")
  return defaults.model_config(
      variant=variant, **overrides,
      image_size=image_size or info.image_size or grid * dims.patch_size,
      num_frames=num_frames or info.num_frames or (time.shape[0] if time is not None else 8),
      attention_type=info.attention_type or "divided_space_time")


def _variant_for(dims, table) -> tuple[str, dict]:
  """('B/16', {}) for a standard size, else a same-width (or B) variant with explicit dims."""
  for name, (width, depth, heads, mlp) in table.items():
    if (width, depth, heads, mlp) == (dims.width, dims.depth, dims.num_heads, dims.mlp_dim):
      return f"{name}/{dims.patch_size}", {}
  same_width = [n for n, v in table.items() if v[0] == dims.width]
  return f"{(same_width or ['B'])[0]}/{dims.patch_size}", dict(
      width=dims.width, depth=dims.depth, num_heads=dims.num_heads, mlp_dim=dims.mlp_dim)


def build_config(weights, model_config, head_name: str | None, *, stride=None):
  """The full config of a converted checkpoint: model, input normalisation, one entry per head."""
  config = defaults.base_config()
  config.model = model_config
  config.input.mean, config.input.std = tuple(weights.info.mean), tuple(weights.info.std)
  # An image model's head classifies images: 1-frame clips.
  frames = 1 if weights.is_image_model else model_config.num_frames
  for head in weights.head_names():
    config.datasets[head_name if head == "head" and head_name else head] = defaults.dataset_config(
        source="", num_classes=weights.num_classes(head), num_frames=frames,
        stride=1 if frames == 1 else stride or weights.info.stride or DEFAULT_STRIDE,
        crop_size=model_config.image_size, eval_short_side=model_config.image_size)
  return config


def convert(input_path: str, output: str, *, fmt: str = "auto", num_heads=None, dataset=None,
            num_frames=None, image_size=None, stride=None, fps=None) -> dict:
  """Writes `output` (see the module docstring); returns the config as a dict.

  Args:
    input_path: checkpoint file or directory; fmt: 'auto' or a `files.FORMATS` name.
    num_heads: overrides what the checkpoint says about its attention heads.
    dataset: name for a single-head checkpoint's head (default: its cfg's
      TRAIN.DATASET, else 'head').
    num_frames, image_size: of the converted model (embeddings resized).
    stride, fps: how predict samples videos for this head.
  """
  _check_output(output)
  weights = loader.read_pretrained(input_path, fmt, num_heads=num_heads)
  if weights.format == "orbax":
    raise ValueError(f"{input_path} is already an Orbax checkpoint of ours; use it as it is.")
  head_name = dataset or _dataset_name(weights.info.dataset)
  model_config = model_config_for(weights, num_frames=num_frames, image_size=image_size)
  config = build_config(weights, model_config, head_name, stride=stride)
  num_classes = {name: ds.num_classes for name, ds in config.datasets.items()}
  head_map = {head_name: "head"} if "head" in weights.head_names() else {}
  arrays, report = fit.fit(weights, loader.model_param_shapes(model_config, num_classes),
                           heads="all", head_map=head_map, model_dims=cover.model_dims(model_config))
  class_names = {(head_name if h == "head" else h): names
                 for h, names in weights.info.class_names.items() if h in weights.head_names()}
  # How predict decodes a video for these heads: at `fps`, short side at the model's size.
  prepared = {name: {"fps": fps or DEFAULT_FPS, "short_side": model_config.image_size,
                     "jpeg_quality": None} for name in config.datasets}
  meta = {"step": 0, "config": config.to_json(), "class_names": class_names, "prepared": prepared,
          "converted_from": {"path": os.path.abspath(input_path), "format": weights.format,
                             "num_heads_from": weights.info.heads_from, "report": report.summary()}}
  manager.write_params_only(output, loader.params_state(arrays, model_config, num_classes),
                            config.to_json(indent=2), meta)
  logging.info("converted %s (%s): %s", input_path, weights.format, report.summary())
  return json.loads(config.to_json())


def _dataset_name(name: str | None) -> str:
  return (name or "head").strip().lower().replace(" ", "_").replace("-", "_") or "head"


def _check_output(output: str) -> None:
  if os.path.isdir(os.path.join(output, "checkpoints")) and os.listdir(os.path.join(output, "checkpoints")):
    raise ValueError(f"{output} already holds a checkpoint; choose a new --output directory")
  os.makedirs(output, exist_ok=True)


def define_flags() -> None:
  """The command's flags (defined only when it runs, so the module imports anywhere)."""
  flags.DEFINE_string("input", None, "Checkpoint file or directory to convert.")
  flags.DEFINE_string("output", None, "Directory to write (must not hold a checkpoint).")
  flags.DEFINE_enum("format", "auto", ["auto", "vit_npz", "big_vision_npz",
      "timesformer_pyth", "hf"], "Input format.")
  flags.DEFINE_integer("num_heads", None, "Attention heads (default: from the "
      "checkpoint, else the standard variant of its width).")
  flags.DEFINE_string("dataset", None, "Name for the checkpoint's classification head "
      "(default: the .pyth cfg's TRAIN.DATASET, else 'head').")
  flags.DEFINE_integer("num_frames", None, "Frames per clip of the converted model "
      "(default: the checkpoint's; 8 for an image model).")
  flags.DEFINE_integer("image_size", None, "Input size of the converted model "
      "(default: the checkpoint's).")
  flags.DEFINE_integer("stride", None, "Temporal stride for predict (default: the "
      "checkpoint's cfg, else 32 frames at 30 fps as TimeSformer K400).")
  flags.DEFINE_float("fps", None, "Frame rate videos are decoded at for predict (default 30).")
  flags.mark_flags_as_required(["input", "output"])


def _flags_for(config: dict, output: str) -> str:
  model = config["model"]
  parts = [f"--config.init_from={output}", f"--config.model.variant={model['variant']}"]
  parts += [f"--config.model.{k}={model[k]}" for k in ("width", "depth", "num_heads", "mlp_dim") if model[k]]
  return " ".join(parts)


def main(argv):
  del argv
  run_log.capture(keep=False)  # results, not Orbax's INFO lines
  args = flags.FLAGS
  try:
    config = convert(args.input, args.output, fmt=args.format, num_heads=args.num_heads,
                     dataset=args.dataset, num_frames=args.num_frames,
                     image_size=args.image_size, stride=args.stride, fps=args.fps)
  except (files.CheckpointFileError, fit.PretrainedMismatchError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  model = config["model"]
  heads = ", ".join(f"{n} ({d['num_classes']} classes)" for n, d in sorted(config["datasets"].items()))
  print(f"wrote {args.output}: variant {model['variant']}, {model['num_frames']} frames of "
        f"{model['image_size']} px, {model['attention_type']}; heads: {heads or 'none'}\n"
        f"fine-tune from it with: {_flags_for(config, args.output)}\n"
        f"classify a video with: python -m cover_jax.predict --checkpoint={args.output} --input=VIDEO",
        flush=True)


if __name__ == "__main__":
  _exits.imports_done()
  define_flags()
  app.run(main)
