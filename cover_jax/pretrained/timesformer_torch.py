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

One table (`name_table`: official key, our path, layout) serves both ways:
`convert` reads official weights into ours, `from_ours` writes ours back
(export to HuggingFace, `hf_export.py`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from cover_jax.pretrained import files
from cover_jax.pretrained.weights import CheckpointInfo, PretrainedError, PretrainedWeights

# Official module name -> ours, within a block.
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


@dataclasses.dataclass(frozen=True)
class Layout:
  """How one official array becomes ours and back (see the module docstring)."""
  to_ours: Callable[[np.ndarray, int], np.ndarray]  # (array, attention heads) -> ours
  to_official: Callable[[np.ndarray], np.ndarray]


_SAME = Layout(lambda v, heads: v, lambda v: v)
_LINEAR = Layout(lambda v, heads: v.T, lambda v: v.T)  # nn.Linear (out, in) <-> kernel (in, out)
_PATCH = Layout(lambda v, heads: v.transpose(2, 3, 1, 0),  # Conv2d (D, 3, p, p) <-> (p, p, 3, D)
                lambda v: v.transpose(3, 2, 0, 1))
_CLS = Layout(lambda v, heads: v.reshape(-1), lambda v: v.reshape(1, 1, -1))  # (1, 1, D) <-> (D,)
_UNBATCHED = Layout(lambda v, heads: v[0], lambda v: v[None])  # (1, L, D) <-> (L, D)
_QKV = Layout(lambda v, heads: v.T.reshape(v.shape[1], 3, heads, -1),  # (3D, D) <-> (D, 3, H, D/H)
              lambda v: v.reshape(v.shape[0], -1).T)
_QKV_BIAS = Layout(lambda v, heads: v.reshape(3, heads, -1), lambda v: v.reshape(-1))
_PROJ = Layout(lambda v, heads: v.T.reshape(heads, -1, v.shape[0]),  # (D, D) <-> (H, D/H, D)
               lambda v: v.reshape(-1, v.shape[-1]).T)


def _norm(theirs: str, ours: str):
  return ((f"{theirs}.weight", f"{ours}/scale", _SAME), (f"{theirs}.bias", f"{ours}/bias", _SAME))


def _linear(theirs: str, ours: str):
  return ((f"{theirs}.weight", f"{ours}/kernel", _LINEAR),
          (f"{theirs}.bias", f"{ours}/bias", _SAME))


def _attention(theirs: str, ours: str):
  return ((f"{theirs}.qkv.weight", f"{ours}/qkv_kernel", _QKV),
          (f"{theirs}.qkv.bias", f"{ours}/qkv_bias", _QKV_BIAS),
          (f"{theirs}.proj.weight", f"{ours}/proj_kernel", _PROJ),
          (f"{theirs}.proj.bias", f"{ours}/proj_bias", _SAME))


_TOP = (("patch_embed.proj.weight", "backbone/patch_kernel", _PATCH),
        ("patch_embed.proj.bias", "backbone/patch_bias", _SAME),
        ("cls_token", "backbone/cls_token", _CLS),
        ("pos_embed", "backbone/pos_embed", _UNBATCHED),
        ("time_embed", "backbone/time_embed", _UNBATCHED),
        *_norm("norm", "backbone/norm"), *_linear("head", "heads/head"))
_BLOCK = (*(e for t, o in _BLOCK_NORMS.items() for e in _norm(t, o)),
          *(e for t, o in _BLOCK_LINEARS.items() for e in _linear(t, o)),
          *(e for t, o in _ATTENTIONS.items() for e in _attention(t, o)))


def name_table(block_indices) -> list[tuple[str, str, Layout]]:
  """(official key, our flat path, layout) of every parameter; the one table both ways.

  The single classification head is the official `head`, ours `heads/head`.
  """
  return [*_TOP, *((f"blocks.{i}.{theirs}", f"backbone/blocks/{i}/{ours}", layout)
                   for i in sorted(block_indices) for theirs, ours, layout in _BLOCK)]


def _block_indices(keys, pattern: str) -> set[int]:
  return {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}


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
  consumed = set()
  for theirs, ours, layout in name_table(_block_indices(state, r"^blocks\.(\d+)\.")):
    if theirs in state:
      out.params[ours] = layout.to_ours(state[theirs], num_heads)
      out.sources[ours] = sources.get(theirs, theirs)
      consumed.add(theirs)
  out.unexpected = [sources.get(k, k) for k in sorted(set(state) - consumed)]
  out.info.attention_type = out.info.attention_type or attention_type_of(state)
  if "time_embed" in state:
    out.info.num_frames = out.info.num_frames or int(state["time_embed"].shape[1])
  return out


def from_ours(params: dict[str, np.ndarray], head: str) -> dict[str, np.ndarray]:
  """The official state dict of our per-block parameters, with head `head` as its `head`.

  The inverse of `convert` (same table). Other heads are left out.

  Raises:
    PretrainedError: a parameter of ours has no official name (not a TimeSformer of ours).
  """
  mine = f"heads/{head}/"
  flat = {("heads/head/" + k[len(mine):] if k.startswith(mine) else k): v
          for k, v in params.items() if not k.startswith("heads/") or k.startswith(mine)}
  table = name_table(_block_indices(flat, r"^backbone/blocks/(\d+)/"))
  state = {theirs: layout.to_official(np.asarray(flat[ours]))
           for theirs, ours, layout in table if ours in flat}
  left = sorted(set(flat) - {ours for _, ours, _ in table})
  if left:
    raise PretrainedError(f"parameters with no official TimeSformer name: {left[:8]}")
  return state


def attention_type_of(state) -> str:
  if any(".temporal_attn." in k for k in state):
    return "divided_space_time"
  return "joint_space_time" if "time_embed" in state else "space_only"


def width_of(state: dict[str, np.ndarray]) -> int | None:
  if "cls_token" in state:
    return int(state["cls_token"].shape[-1])
  if "patch_embed.proj.weight" in state:
    return int(state["patch_embed.proj.weight"].shape[0])
  return None
