"""Official TimeSformer checkpoints (facebookresearch/TimeSformer) -> our layout.

A released ``.pyth`` is a torch-saved dict ``{"model_state": {...}, "cfg":
<YAML>, "epoch": ..., "optimizer_state": ...}`` whose weights carry a
``model.`` prefix: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1+N, D),
``time_embed`` (1, T, D), ``patch_embed.proj`` (Conv2d (D, 3, p, p)),
``blocks.N.{norm1, attn.qkv, attn.proj, temporal_norm1, temporal_attn.qkv,
temporal_attn.proj, temporal_fc, norm2, mlp.fc1, mlp.fc2}``, ``norm``,
``head``. It is read with ``torch.load(weights_only=True)`` (`files.py`). The
same state dict saved as an ``.npz`` (official key names, ``np.savez``) is
read without torch.

Layouts: ``nn.Linear`` weights are (out, in): our kernels are their
transposes. The fused ``qkv`` weight (3D, D) has output index
``s*D + h*D/H + k`` (it is reshaped to (3, H, D/H) in the forward pass), so
its transpose reshapes to our ``qkv_kernel`` (D, 3, H, D/H); ``proj``'s input
index is ``h*D/H + k``, so its transpose reshapes to ``proj_kernel``
(H, D/H, D). That split needs the number of heads, which the shapes do not
give: it comes from the caller (the configured model), the checkpoint's cfg
(``MODEL.MODEL_NAME``, e.g. ``vit_base_patch16_224``) or the standard
variant of that width.
"""

from __future__ import annotations

import re

import numpy as np

from cover_jax.pretrained import files
from cover_jax.pretrained.weights import CheckpointInfo, PretrainedWeights

# Official module name -> ours, within a block and at the top level.
_BLOCK_LINEARS = {"temporal_fc": "temporal_fc", "mlp.fc1": "mlp/fc1", "mlp.fc2": "mlp/fc2"}
_BLOCK_NORMS = {"norm1": "norm1", "norm2": "norm2", "temporal_norm1": "temporal_norm1"}
_ATTENTIONS = {"attn": "attn", "temporal_attn": "temporal_attn"}
_VIT_NAMES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}
_MODEL_NAME_RE = re.compile(r"vit_(tiny|small|base|large|huge)_patch(\d+)")


def read(path: str) -> tuple[dict[str, np.ndarray], CheckpointInfo, dict[str, str]]:
  """(official state dict without prefixes, what its cfg says, dropped entries) of a file."""
  if path.endswith(".npz"):
    raw = files.read_npz(path)
    state, cfg, dropped = raw, None, {}
  else:
    raw = files.read_torch(path)
    if not isinstance(raw, dict):
      raise files.CheckpointFileError(f"{path}: expected a dict (a state dict or a checkpoint "
                                      f"with 'model_state'), found {type(raw).__name__}")
    state, cfg, dropped = _unwrap(raw)
  state = {_strip(k): np.asarray(v, np.float32) for k, v in state.items()
           if isinstance(v, np.ndarray)}
  return state, info_from_cfg(cfg), dropped


def _unwrap(raw: dict):
  """The model weights of a training checkpoint (`model_state`/`state_dict`) or a bare state dict."""
  for key in ("model_state", "state_dict", "model"):
    if isinstance(raw.get(key), dict):
      dropped = {k: "training state, not model weights" for k in raw if k not in (key, "cfg")}
      return raw[key], raw.get("cfg"), dropped
  return raw, None, {}


def _strip(key: str) -> str:
  for prefix in ("module.", "model."):
    if key.startswith(prefix):
      key = key[len(prefix):]
  return key


def info_from_cfg(cfg) -> CheckpointInfo:
  """The facts a TimeSformer cfg (YAML text of its training config) gives."""
  info = CheckpointInfo()
  if not cfg:
    return info
  import yaml  # pylint: disable=import-outside-toplevel (ml_collections' dependency)

  tree = yaml.safe_load(cfg) if isinstance(cfg, str) else cfg
  if not isinstance(tree, dict):
    return info
  data, model = tree.get("DATA", {}) or {}, tree.get("MODEL", {}) or {}
  info.num_frames = data.get("NUM_FRAMES")
  info.stride = data.get("SAMPLING_RATE")
  info.image_size = data.get("TEST_CROP_SIZE") or data.get("TRAIN_CROP_SIZE")
  info.mean = tuple(data.get("MEAN") or info.mean)
  info.std = tuple(data.get("STD") or info.std)
  info.attention_type = (tree.get("TIMESFORMER", {}) or {}).get("ATTENTION_TYPE")
  info.dataset = (tree.get("TRAIN", {}) or {}).get("DATASET")
  match = _MODEL_NAME_RE.search(str(model.get("MODEL_NAME", "")))
  if match:
    from cover_jax.models import timesformer  # pylint: disable=import-outside-toplevel
    info.num_heads = timesformer.VARIANT_DIMS[_VIT_NAMES[match[1]]][2]
    info.heads_from = f"the checkpoint's cfg (MODEL.MODEL_NAME={model['MODEL_NAME']})"
  return info


def convert(state: dict[str, np.ndarray], num_heads: int, *, path: str, fmt: str,
            info: CheckpointInfo, sources: dict[str, str] | None = None,
            dropped: dict[str, str] | None = None) -> PretrainedWeights:
  """Our-layout weights of an official-layout state dict.

  Args:
    state: official key -> array (no ``model.`` prefix).
    num_heads: attention heads (needed to split the fused qkv weights).
    sources: official key -> the key as named in the file (for HuggingFace).
  """
  sources = sources or {}
  out = PretrainedWeights(path=path, format=fmt, params={}, sources={}, info=info,
                          dropped=dict(dropped or {}))
  consumed: set[str] = set()

  def take(key: str) -> np.ndarray:
    consumed.add(key)
    return state[key]

  def put(ours: str, value: np.ndarray, key: str) -> None:
    out.params[ours] = value
    out.sources[ours] = sources.get(key, key)

  _convert_top(state, take, put)
  for index in sorted({int(k.split(".")[1]) for k in state if re.match(r"^blocks\.\d+\.", k)}):
    _convert_block(state, f"blocks.{index}.", f"backbone/blocks/{index}/", num_heads, take, put)
  out.unexpected = [sources.get(k, k) for k in sorted(set(state) - consumed)]
  out.info.attention_type = out.info.attention_type or attention_type_of(state)
  if "time_embed" in state:
    out.info.num_frames = out.info.num_frames or int(state["time_embed"].shape[1])
  return out


def attention_type_of(state) -> str:
  if any(".temporal_attn." in k for k in state):
    return "divided_space_time"
  return "joint_space_time" if "time_embed" in state else "space_only"


def _convert_top(state, take, put) -> None:
  if "patch_embed.proj.weight" in state:  # Conv2d (D, 3, p, p) -> (p, p, 3, D)
    put("backbone/patch_kernel", take("patch_embed.proj.weight").transpose(2, 3, 1, 0),
        "patch_embed.proj.weight")
  if "patch_embed.proj.bias" in state:
    put("backbone/patch_bias", take("patch_embed.proj.bias"), "patch_embed.proj.bias")
  for key, ours in (("cls_token", "cls_token"), ("pos_embed", "pos_embed"), ("time_embed", "time_embed")):
    if key in state:
      value = take(key)
      put(f"backbone/{ours}", value.reshape(-1) if key == "cls_token" else value[0], key)
  _norm(state, "norm.", "backbone/norm/", take, put)
  _linear(state, "head.", "heads/head/", take, put)


def _norm(state, prefix, ours, take, put) -> None:
  for theirs, mine in (("weight", "scale"), ("bias", "bias")):
    if prefix + theirs in state:
      put(ours + mine, take(prefix + theirs), prefix + theirs)


def _linear(state, prefix, ours, take, put) -> None:
  if prefix + "weight" in state:
    put(ours + "kernel", take(prefix + "weight").T, prefix + "weight")
  if prefix + "bias" in state:
    put(ours + "bias", take(prefix + "bias"), prefix + "bias")


def _convert_block(state, prefix, ours, num_heads, take, put) -> None:
  for theirs, mine in _BLOCK_NORMS.items():
    _norm(state, f"{prefix}{theirs}.", f"{ours}{mine}/", take, put)
  for theirs, mine in _BLOCK_LINEARS.items():
    _linear(state, f"{prefix}{theirs}.", f"{ours}{mine}/", take, put)
  for theirs, mine in _ATTENTIONS.items():
    _attention(state, f"{prefix}{theirs}.", f"{ours}{mine}/", num_heads, take, put)


def _attention(state, prefix, ours, num_heads, take, put) -> None:
  """qkv (3D, D) -> (D, 3, H, D/H); proj (D, D) -> (H, D/H, D)."""
  key = prefix + "qkv.weight"
  if key in state:
    width = state[key].shape[1]
    head_dim = width // num_heads
    put(ours + "qkv_kernel", take(key).T.reshape(width, 3, num_heads, head_dim), key)
    if prefix + "qkv.bias" in state:
      put(ours + "qkv_bias", take(prefix + "qkv.bias").reshape(3, num_heads, head_dim),
          prefix + "qkv.bias")
  key = prefix + "proj.weight"
  if key in state:
    width = state[key].shape[0]
    put(ours + "proj_kernel", take(key).T.reshape(num_heads, width // num_heads, width), key)
    if prefix + "proj.bias" in state:
      put(ours + "proj_bias", take(prefix + "proj.bias"), prefix + "proj.bias")


def width_of(state: dict[str, np.ndarray]) -> int | None:
  if "cls_token" in state:
    return int(state["cls_token"].shape[-1])
  if "patch_embed.proj.weight" in state:
    return int(state["patch_embed.proj.weight"].shape[0])
  return None
