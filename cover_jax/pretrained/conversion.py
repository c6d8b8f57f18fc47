"""Converting a released checkpoint into an Orbax checkpoint of ours plus the config that fits it.

The library behind `python -m cover_jax.convert` (see that module for usage).
The model is read off the checkpoint: dimensions from the shapes; heads,
frames, image size, stride and class names from what comes with it (HF
config.json, the .pyth's cfg), each overridable. The output directory holds
``checkpoints/0/`` (Orbax: ``state`` = {step, params}, ``meta`` = config,
class names, provenance) and ``config.json``.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from cover_jax.checkpoint import manager
from cover_jax.config import defaults
from cover_jax.models import cover, timesformer
from cover_jax.pretrained import fit, loader
from cover_jax.pretrained.weights import PretrainedWeights, checkpoint_dims

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


def build_config(weights, model_config, head_name: str | None, *, stride=None, fps=None):
  """The full config of a converted checkpoint: model, input normalisation, one entry per head."""
  config = defaults.base_config()
  config.model = model_config
  config.input.mean, config.input.std = tuple(weights.info.mean), tuple(weights.info.std)
  # An image model's head classifies images: 1-frame clips.
  frames = 1 if weights.is_image_model else model_config.num_frames
  for head in weights.head_names():
    config.datasets[head_name if head == "head" and head_name else head] = ml_collections.ConfigDict(dict(
        source="", num_classes=weights.num_classes(head), num_frames=frames,
        stride=1 if frames == 1 else stride or weights.info.stride or DEFAULT_STRIDE,
        fps=fps or DEFAULT_FPS, crop_size=model_config.image_size,
        eval_short_side=model_config.image_size))
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
  config = build_config(weights, model_config, head_name, stride=stride, fps=fps)
  num_classes = {name: ds.num_classes for name, ds in config.datasets.items()}
  head_map = {head_name: "head"} if "head" in weights.head_names() else {}
  arrays, report = fit.fit(weights, loader.model_param_shapes(model_config, num_classes),
                           heads="all", head_map=head_map, model_dims=cover.model_dims(model_config))
  class_names = {(head_name if h == "head" else h): names
                 for h, names in weights.info.class_names.items() if h in weights.head_names()}
  meta = {"step": 0, "config": config.to_json(), "class_names": class_names,
          "converted_from": {"path": os.path.abspath(input_path), "format": weights.format,
                             "num_heads_from": weights.info.heads_from, "report": report.summary()}}
  _write(output, _params_tree(arrays, model_config, num_classes), config, meta)
  logging.info("converted %s (%s): %s", input_path, weights.format, report.summary())
  return json.loads(config.to_json())


def _params_tree(arrays: dict, model_config, num_classes: dict):
  """The model's nnx.State of parameters, every leaf from `arrays`."""
  model = nnx.eval_shape(lambda: cover.build_model(model_config, num_classes, nnx.Rngs(0)))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(arrays[loader.flat_key(path)], leaf.dtype),
      nnx.state(model, nnx.Param))


def _write(output: str, params, config, meta: dict) -> None:
  ckpt = manager.Checkpointer(os.path.join(output, "checkpoints"), max_to_keep=1,
                                 asynchronous=False)
  ckpt.save(0, {"step": jnp.zeros((), jnp.int32), "params": params}, meta)
  ckpt.close()
  with open(os.path.join(output, "config.json"), "w") as f:
    f.write(config.to_json(indent=2) + "\n")


def _dataset_name(name: str | None) -> str:
  return (name or "head").strip().lower().replace(" ", "_").replace("-", "_") or "head"


def _check_output(output: str) -> None:
  if os.path.isdir(os.path.join(output, "checkpoints")) and os.listdir(os.path.join(output, "checkpoints")):
    raise ValueError(f"{output} already holds a checkpoint; choose a new --output directory")
  os.makedirs(output, exist_ok=True)
