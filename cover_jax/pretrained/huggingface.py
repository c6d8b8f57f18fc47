"""HuggingFace TimeSformer checkpoints -> the official key names -> our layout (and back).

``transformers``' ``TimesformerForVideoClassification`` is the official model
with other names: the mapping below is one-to-one (checked by logits parity
in tests/test_pretrained_timesformer.py), so HF weights are renamed to the
official keys and converted by `timesformer_torch`. Its token order is the
official one too (``TimesformerEmbeddings`` permutes (B*T, N, D) patch tokens
to (B, N*T, D): token (n, t) at 1 + n*T + t, the cls token first).

One behaviour is *not* copied: HF's layers reshape tokens with the
*configured* ``num_frames`` and image size, so an input with another frame
count runs without error and gives wrong logits. Converted weights run in our
model, which handles any T like the official code (nearest-resized time
embedding).

A model directory holds ``config.json`` (heads, sizes, ``id2label``) and
``model.safetensors`` or ``pytorch_model.bin``; a weights file can also be
given directly, with ``config.json`` beside it.

The name table (`_NAMES`) is read both ways: `to_official` on import,
`from_official` on export (`hf_export.py`). Our own exports carry a
``cover_jax_export`` entry in config.json; for those the head's dataset name,
stride and the processor's mean/std are taken as exported (the released HF
repos list mean/std that their weights were not trained with).
"""

from __future__ import annotations

import json
import logging
import os
import re

import numpy as np

from cover_jax.pretrained import files, timesformer_torch
from cover_jax.pretrained.weights import HALF, CheckpointInfo, PretrainedError, PretrainedWeights

# (HF name, official name) without "timesformer.": a whole key, or a module (ending
# in '.') whose weight and bias follow; {i}: a block index. Read both ways.
_NAMES = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.time_embeddings", "time_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("encoder.layer.{i}.layernorm_before.", "blocks.{i}.norm1."),
    ("encoder.layer.{i}.layernorm_after.", "blocks.{i}.norm2."),
    ("encoder.layer.{i}.attention.attention.qkv.", "blocks.{i}.attn.qkv."),
    ("encoder.layer.{i}.attention.output.dense.", "blocks.{i}.attn.proj."),
    ("encoder.layer.{i}.temporal_layernorm.", "blocks.{i}.temporal_norm1."),
    ("encoder.layer.{i}.temporal_attention.attention.qkv.", "blocks.{i}.temporal_attn.qkv."),
    ("encoder.layer.{i}.temporal_attention.output.dense.", "blocks.{i}.temporal_attn.proj."),
    ("encoder.layer.{i}.temporal_dense.", "blocks.{i}.temporal_fc."),
    ("encoder.layer.{i}.intermediate.dense.", "blocks.{i}.mlp.fc1."),
    ("encoder.layer.{i}.output.dense.", "blocks.{i}.mlp.fc2."),
    ("layernorm.", "norm."),
    ("classifier.", "head."),  # HF's classifier sits outside "timesformer."
)
_PREFIX = "timesformer."
# config.json's entry in our exports (hf_export.py): the head's dataset and stride; its
# presence says the processor's mean/std are the model's (released HF repos' are not).
EXPORT_KEY = "cover_jax_export"
_OUTSIDE_PREFIX = "classifier."


def _rules(source: int) -> tuple[tuple[re.Pattern, str], ...]:
  """(pattern, replacement) per `_NAMES` entry, from column `source` to the other one."""
  rules = []
  for names in _NAMES:
    theirs, target = names[source], names[1 - source]
    pattern = r"(\d+)".join(re.escape(part) for part in theirs.split("{i}"))
    rules.append((re.compile(f"^{pattern}" + ("" if theirs.endswith(".") else "$")),
                  target.replace("{i}", r"\1")))
  return tuple(rules)


_TO_OFFICIAL, _TO_HF = _rules(0), _rules(1)


def _rename(key: str, rules) -> str | None:
  for pattern, replacement in rules:
    renamed, count = pattern.subn(replacement, key)
    if count:
      return renamed
  return None


def to_official(hf_state: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
  """(official state dict, official key -> HF key, HF keys with no official name)."""
  state, sources, unknown = {}, {}, []
  for key, value in hf_state.items():
    official = _rename(key[len(_PREFIX):] if key.startswith(_PREFIX) else key, _TO_OFFICIAL)
    if official is None:
      unknown.append(key)
    else:
      state[official], sources[official] = value, key
  return state, sources, unknown


def from_official(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The HF state dict (``TimesformerForVideoClassification``'s names) of an official one.

  Raises:
    PretrainedError: a key with no HuggingFace name.
  """
  out = {}
  for key, value in state.items():
    name = _rename(key, _TO_HF)
    if name is None:
      raise PretrainedError(f"{key}: no HuggingFace TimeSformer name")
    out[name if name.startswith(_OUTSIDE_PREFIX) else _PREFIX + name] = value
  return out


def weights_and_config_paths(path: str) -> tuple[str, str | None]:
  """(weights file, config.json or None) for a model directory or a weights file."""
  if files.isdir(path):
    weights = files.hf_weight_file(path)
    if weights is None:
      raise files.CheckpointFileError(
          f"{path}: no {' or '.join(files.HF_WEIGHT_FILES)} in this HuggingFace model directory")
    directory = path
  else:
    weights, directory = path, os.path.dirname(path)
  config = os.path.join(directory, "config.json")
  return weights, config if files.isfile(config) else None


def read(path: str) -> tuple[dict[str, np.ndarray], CheckpointInfo]:
  """(HF state dict, what config.json says) of a model directory or weights file."""
  weights_path, config_path = weights_and_config_paths(path)
  if weights_path.endswith(".safetensors"):
    state = files.read_safetensors(weights_path)
  elif weights_path.endswith(".npz"):
    state = files.read_npz(weights_path)
  else:
    state = files.read_torch(weights_path)
  info = CheckpointInfo()
  if config_path:
    with files.open_file(config_path, "r") as f:
      info = info_from_config(json.load(f), config_path)
  return {k: np.asarray(v, np.float32) for k, v in state.items()}, info


def info_from_config(config: dict, config_path: str) -> CheckpointInfo:
  """Heads, sizes, frames and class names from a TimesformerConfig's config.json."""
  _check_supported(config, config_path)
  info = CheckpointInfo()
  if config.get("num_attention_heads"):
    info.num_heads = int(config["num_attention_heads"])
    info.heads_from = f"{config_path} (num_attention_heads)"
  info.image_size = _int(config.get("image_size"))
  info.num_frames = config.get("num_frames")
  info.attention_type = config.get("attention_type")
  id2label = config.get("id2label") or {}
  if id2label:
    info.class_names["head"] = [id2label.get(str(i), id2label.get(i, str(i)))
                                for i in range(len(id2label))]
  _normalisation(info, config, os.path.dirname(config_path))
  return info


def _int(value):
  return value[0] if isinstance(value, (list, tuple)) else value


def _check_supported(config: dict, config_path: str) -> None:
  """Settings our model does not have (it fixes exact GELU, qkv bias, LayerNorm eps 1e-6)."""
  problems = []
  if config.get("hidden_act", "gelu") != "gelu":
    problems.append(f"hidden_act={config['hidden_act']!r} (ours: exact 'gelu')")
  if not config.get("qkv_bias", True):
    problems.append("qkv_bias=false (ours: true)")
  if abs(float(config.get("layer_norm_eps", 1e-6)) - 1e-6) > 1e-12:
    problems.append(f"layer_norm_eps={config['layer_norm_eps']} (ours: 1e-6)")
  if config.get("num_channels", 3) != 3:
    problems.append(f"num_channels={config['num_channels']} (ours: 3)")
  if problems:
    raise files.CheckpointFileError(
        f"{config_path}: this TimeSformer differs from the official architecture in "
        f"{', '.join(problems)}; its weights cannot reproduce the model here.")


def _normalisation(info: CheckpointInfo, config: dict, directory: str) -> None:
  """Our own exports: head name, stride and normalisation as exported; others: mean = std = 0.5."""
  path = os.path.join(directory, "preprocessor_config.json")
  pre = {}
  if files.isfile(path):
    with files.open_file(path, "r") as f:
      pre = json.load(f)
  mean, std = pre.get("image_mean"), pre.get("image_std")
  exported = config.get(EXPORT_KEY)
  if isinstance(exported, dict):  # written by `cover_jax.export`: its processor is the model's
    info.dataset, info.stride = exported.get("dataset"), exported.get("stride")
    if mean and std:
      info.mean, info.std = tuple(mean), tuple(std)
  elif mean and std and (tuple(mean), tuple(std)) != (HALF, HALF):
    logging.warning("%s lists image_mean=%s image_std=%s; the released TimeSformer weights were "
                    "trained on [0, 1] frames normalised with mean = std = 0.5, which is what "
                    "the converted config uses (change config.input.mean/std to override).",
                    path, mean, std)


def convert(hf_state, info: CheckpointInfo, num_heads: int, *, path: str) -> PretrainedWeights:
  """Our-layout weights of a HF TimeSformer state dict."""
  state, sources, unknown = to_official(hf_state)
  weights = timesformer_torch.convert(state, num_heads, path=path, fmt="hf", info=info,
                                      sources=sources)
  weights.unexpected = sorted(weights.unexpected + unknown)
  return weights
