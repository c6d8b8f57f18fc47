"""Float64 NumPy re-implementation of the official TimeSformer forward pass.

Follows facebookresearch/TimeSformer ``timesformer/models/vit.py`` line by line
(``Attention.forward``, ``Block.forward``, ``PatchEmbed.forward``,
``VisionTransformer.forward_features``), in the official token layout: one
sequence (B, 1 + N*T, D) with patch token (n, t) at index ``1 + n*T + t``,
rearranged with the official einops patterns. Eval mode only (no dropout, no
drop path).

The reference reads parameters in the official PyTorch layout (a ``state_dict``
of NumPy arrays: ``nn.Linear`` weights are (out, in) and applied as
``x @ W.T + b``; the patch conv weight is (D, 3, p, p)). ``convert_params``
maps our Flax NNX parameters onto that layout, so every comparison against
this module also tests the weight conversion.

Nothing here imports cover_jax: the only shared knowledge is the parameter
names of our model, used by the converters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from einops import rearrange

LAYER_NORM_EPS = 1e-6

_erf = np.vectorize(math.erf, otypes=[np.float64])


# --- Layers (PyTorch semantics) ---------------------------------------------


def gelu(x: np.ndarray) -> np.ndarray:
  """nn.GELU(): exact erf form."""
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
               eps: float = LAYER_NORM_EPS) -> np.ndarray:
  mean = x.mean(axis=-1, keepdims=True)
  var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch
  return (x - mean) / np.sqrt(var + eps) * weight + bias


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
  """nn.Linear: weight (out, in)."""
  y = x @ weight.T
  return y if bias is None else y + bias


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def legacy_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source indices of F.interpolate(mode='nearest') for a given output size.

  ATen's legacy nearest rule: scale = (float) in / out, src = min(floor(dst *
  scale), in - 1), computed in float32 as ATen does.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1)


def interpolate_nearest(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
  """F.interpolate(x, size=size, mode='nearest') over the trailing len(size) axes."""
  lead = x.ndim - len(size)
  for axis, out_size in enumerate(size):
    idx = legacy_nearest_indices(x.shape[lead + axis], out_size)
    x = np.take(x, idx, axis=lead + axis)
  return x


# --- Modules -----------------------------------------------------------------


def attention(x: np.ndarray, sd: Mapping[str, np.ndarray], prefix: str,
              num_heads: int) -> np.ndarray:
  """Attention.forward (with_qkv=True, qkv_bias=True, qk_scale=None)."""
  b, n, c = x.shape
  head_dim = c // num_heads
  scale = head_dim ** -0.5
  qkv = linear(x, sd[prefix + "qkv.weight"], sd[prefix + "qkv.bias"])
  qkv = qkv.reshape(b, n, 3, num_heads, head_dim).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  attn = (q @ np.swapaxes(k, -2, -1)) * scale
  attn = softmax(attn, axis=-1)
  x = (attn @ v).transpose(0, 2, 1, 3).reshape(b, n, c)
  return linear(x, sd[prefix + "proj.weight"], sd[prefix + "proj.bias"])


def mlp(x, sd, prefix):
  x = gelu(linear(x, sd[prefix + "fc1.weight"], sd[prefix + "fc1.bias"]))
  return linear(x, sd[prefix + "fc2.weight"], sd[prefix + "fc2.bias"])


def _norm(x, sd, prefix):
  return layer_norm(x, sd[prefix + "weight"], sd[prefix + "bias"])


def block_forward(x: np.ndarray, sd: Mapping[str, np.ndarray], prefix: str, *,
                  B: int, T: int, W: int, attention_type: str,
                  num_heads: int) -> np.ndarray:
  """Block.forward(x, B, T, W) of the official code (drop_path = identity)."""
  num_spatial_tokens = (x.shape[1] - 1) // T
  H = num_spatial_tokens // W
  attn = lambda y, name: attention(y, sd, prefix + name + ".", num_heads)

  if attention_type in ("space_only", "joint_space_time"):
    x = x + attn(_norm(x, sd, prefix + "norm1."), "attn")
    x = x + mlp(_norm(x, sd, prefix + "norm2."), sd, prefix + "mlp.")
    return x
  if attention_type != "divided_space_time":
    raise ValueError(attention_type)

  # Temporal
  xt = x[:, 1:, :]
  xt = rearrange(xt, "b (h w t) m -> (b h w) t m", b=B, h=H, w=W, t=T)
  res_temporal = attn(_norm(xt, sd, prefix + "temporal_norm1."), "temporal_attn")
  res_temporal = rearrange(res_temporal, "(b h w) t m -> b (h w t) m", b=B, h=H, w=W, t=T)
  res_temporal = linear(res_temporal, sd[prefix + "temporal_fc.weight"],
                        sd[prefix + "temporal_fc.bias"])
  xt = x[:, 1:, :] + res_temporal

  # Spatial
  init_cls_token = x[:, 0, :][:, None]
  cls_token = np.repeat(init_cls_token, T, axis=1)  # .repeat(1, T, 1)
  cls_token = rearrange(cls_token, "b t m -> (b t) m", b=B, t=T)[:, None]
  xs = xt
  xs = rearrange(xs, "b (h w t) m -> (b t) (h w) m", b=B, h=H, w=W, t=T)
  xs = np.concatenate([cls_token, xs], axis=1)
  res_spatial = attn(_norm(xs, sd, prefix + "norm1."), "attn")

  # Taking care of CLS token
  cls_token = res_spatial[:, 0, :]
  cls_token = rearrange(cls_token, "(b t) m -> b t m", b=B, t=T)
  cls_token = cls_token.mean(axis=1, keepdims=True)  # averaging for every frame
  res_spatial = res_spatial[:, 1:, :]
  res_spatial = rearrange(res_spatial, "(b t) (h w) m -> b (h w t) m", b=B, h=H, w=W, t=T)
  res = res_spatial
  x = xt

  # Mlp
  x = np.concatenate([init_cls_token, x], axis=1) + np.concatenate([cls_token, res], axis=1)
  x = x + mlp(_norm(x, sd, prefix + "norm2."), sd, prefix + "mlp.")
  return x


def patch_embed(x_bcthw: np.ndarray, sd: Mapping[str, np.ndarray]):
  """PatchEmbed.forward: per-frame Conv2d(3, D, kernel=p, stride=p)."""
  B, C, T, H, W = x_bcthw.shape
  x = rearrange(x_bcthw, "b c t h w -> (b t) c h w")
  weight, bias = sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"]
  p = weight.shape[-1]
  bt, c, h, w = x.shape
  gh, gw = h // p, w // p  # a stride-p conv drops any remainder
  patches = x[:, :, :gh * p, :gw * p].reshape(bt, c, gh, p, gw, p)
  x = np.einsum("bcyixj,dcij->bdyx", patches, weight) + bias[None, :, None, None]
  W = x.shape[-1]
  x = rearrange(x, "bt d gh gw -> bt (gh gw) d")  # .flatten(2).transpose(1, 2)
  return x, T, W


def depth_of(sd: Mapping[str, np.ndarray]) -> int:
  ids = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
  return max(ids) + 1 if ids else 0


def forward_features(x_bcthw: np.ndarray, sd: Mapping[str, np.ndarray], *,
                     attention_type: str, num_heads: int) -> np.ndarray:
  """VisionTransformer.forward_features: (B, 3, T, H, W) -> (B, D) cls features."""
  x_bcthw = np.asarray(x_bcthw, np.float64)
  B = x_bcthw.shape[0]
  x, T, W = patch_embed(x_bcthw, sd)
  cls_tokens = np.broadcast_to(sd["cls_token"], (x.shape[0],) + sd["cls_token"].shape[1:])
  x = np.concatenate([cls_tokens, x], axis=1)

  # Resizing the positional embeddings in case they don't match the input.
  pos_embed = sd["pos_embed"]
  if x.shape[1] != pos_embed.shape[1]:
    cls_pos_embed = pos_embed[0, 0, :][None, None]
    other_pos_embed = np.swapaxes(pos_embed[0, 1:, :][None], 1, 2)
    P = int(other_pos_embed.shape[2] ** 0.5)
    H = x.shape[1] // W
    other_pos_embed = other_pos_embed.reshape(1, x.shape[2], P, P)
    new_pos_embed = interpolate_nearest(other_pos_embed, (H, W))
    new_pos_embed = new_pos_embed.reshape(1, x.shape[2], H * W)  # flatten(2)
    new_pos_embed = np.swapaxes(new_pos_embed, 1, 2)
    new_pos_embed = np.concatenate([cls_pos_embed, new_pos_embed], axis=1)
    x = x + new_pos_embed
  else:
    x = x + pos_embed

  # Time embeddings
  if attention_type != "space_only":
    cls_tokens = x[:B, 0, :][:, None]
    x = x[:, 1:]
    x = rearrange(x, "(b t) n m -> (b n) t m", b=B, t=T)
    time_embed = sd["time_embed"]
    if T != time_embed.shape[1]:
      new_time_embed = interpolate_nearest(np.swapaxes(time_embed, 1, 2), (T,))
      x = x + np.swapaxes(new_time_embed, 1, 2)
    else:
      x = x + time_embed
    x = rearrange(x, "(b n) t m -> b (n t) m", b=B, t=T)
    x = np.concatenate([cls_tokens, x], axis=1)

  # Attention blocks
  for i in range(depth_of(sd)):
    x = block_forward(x, sd, f"blocks.{i}.", B=B, T=T, W=W,
                      attention_type=attention_type, num_heads=num_heads)

  # Predictions for space-only baseline
  if attention_type == "space_only":
    x = rearrange(x, "(b t) n m -> b t n m", b=B, t=T)
    x = x.mean(axis=1)  # averaging predictions for every frame

  x = layer_norm(x, sd["norm.weight"], sd["norm.bias"])
  return x[:, 0]


def forward(x_bcthw, sd, *, attention_type: str, num_heads: int) -> np.ndarray:
  """VisionTransformer.forward: features -> head."""
  features = forward_features(x_bcthw, sd, attention_type=attention_type, num_heads=num_heads)
  return linear(features, sd["head.weight"], sd["head.bias"])


def to_official_input(x_bthwc) -> np.ndarray:
  """Our (B, T, H, W, C) clips -> the official (B, C, T, H, W) layout."""
  return np.asarray(x_bthwc, np.float64).transpose(0, 4, 1, 2, 3)


# --- Parameter conversion: our NNX pure dict -> official state_dict -----------


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float64)


def convert_linear(p: Mapping, prefix: str) -> dict[str, np.ndarray]:
  """nnx.Linear kernel (in, out) -> nn.Linear weight (out, in)."""
  return {prefix + "weight": _np(p["kernel"]).T, prefix + "bias": _np(p["bias"])}


def convert_layer_norm(p: Mapping, prefix: str) -> dict[str, np.ndarray]:
  return {prefix + "weight": _np(p["scale"]), prefix + "bias": _np(p["bias"])}


def convert_attention(p: Mapping, prefix: str) -> dict[str, np.ndarray]:
  """Ours qkv_kernel (D, 3, H, dh) / proj_kernel (H, dh, D) -> torch (3D, D) / (D, D).

  Torch's qkv output index is s*D + h*dh + k (it is reshaped to (.., 3, H, dh));
  proj's input index is h*dh + k (heads concatenated).
  """
  qkv_kernel = _np(p["qkv_kernel"])
  d = qkv_kernel.shape[0]
  proj_kernel = _np(p["proj_kernel"])
  return {
      prefix + "qkv.weight": qkv_kernel.reshape(d, -1).T,
      prefix + "qkv.bias": _np(p["qkv_bias"]).reshape(-1),
      prefix + "proj.weight": proj_kernel.reshape(-1, proj_kernel.shape[-1]).T,
      prefix + "proj.bias": _np(p["proj_bias"]),
  }


def convert_block(p: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
  sd = {}
  sd.update(convert_layer_norm(p["norm1"], prefix + "norm1."))
  sd.update(convert_attention(p["attn"], prefix + "attn."))
  if "temporal_attn" in p:
    sd.update(convert_layer_norm(p["temporal_norm1"], prefix + "temporal_norm1."))
    sd.update(convert_attention(p["temporal_attn"], prefix + "temporal_attn."))
    sd.update(convert_linear(p["temporal_fc"], prefix + "temporal_fc."))
  sd.update(convert_layer_norm(p["norm2"], prefix + "norm2."))
  sd.update(convert_linear(p["mlp"]["fc1"], prefix + "mlp.fc1."))
  sd.update(convert_linear(p["mlp"]["fc2"], prefix + "mlp.fc2."))
  return sd


def convert_backbone(p: Mapping) -> dict[str, np.ndarray]:
  """Our TimeSformer pure dict -> official VisionTransformer state_dict (no head)."""
  d = _np(p["cls_token"]).shape[-1]
  sd = {
      # (p, p, 3, D) -> Conv2d weight (D, 3, p, p)
      "patch_embed.proj.weight": _np(p["patch_kernel"]).transpose(3, 2, 0, 1),
      "patch_embed.proj.bias": _np(p["patch_bias"]),
      "cls_token": _np(p["cls_token"]).reshape(1, 1, d),
      "pos_embed": _np(p["pos_embed"])[None],
  }
  if "time_embed" in p:
    sd["time_embed"] = _np(p["time_embed"])[None]
  blocks = p["blocks"]
  for key in sorted(blocks, key=int):
    sd.update(convert_block(blocks[key], f"blocks.{int(key)}."))
  sd.update(convert_layer_norm(p["norm"], "norm."))
  return sd


def convert_params(p: Mapping, dataset: str | None = None) -> dict[str, np.ndarray]:
  """Our CoVeR pure dict (``nnx.split(model)[1].to_pure_dict()``) -> state_dict.

  The backbone maps onto the official names; ``heads[dataset]`` (if given)
  becomes the official single ``head``.
  """
  sd = convert_backbone(p["backbone"])
  if dataset is not None:
    sd.update(convert_linear(p["heads"][dataset], "head."))
  return sd
