"""Float64 NumPy ViT forward pass reading .npz checkpoints in their own layouts.

Transcribes the Flax ViT of google-research/vision_transformer
(``models_vit.VisionTransformer``, classifier='token') and big_vision
(``models/vit.py``, pool_type='tok'): conv patch embedding, cls token,
learned position embedding (the ViT adds it after prepending cls, with a cls
slot; big_vision adds it to the patches before prepending cls), pre-norm
blocks with Flax ``MultiHeadDotProductAttention`` (per-head query/key/value
kernels (D, H, D/H), ``out`` (H, D/H, D), queries scaled by 1/sqrt(D/H)), an
MLP, the encoder norm, the cls token, optional ``pre_logits`` (dense + tanh)
and the head.

It shares no code with cover_jax: it reads the checkpoint's own key names, so
agreement with our converted model tests the conversion.
"""

from __future__ import annotations

import math
import re

import numpy as np

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x, approximate: bool):
  if approximate:  # jax.nn.gelu's default, used by Flax ViTs
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, scale, bias, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _strip(arrays):
  for prefix in ("opt/target/", "params/"):
    if any(k.startswith(prefix) for k in arrays):
      return {k[len(prefix):]: np.asarray(v, np.float64) for k, v in arrays.items()
              if k.startswith(prefix)}
  return {k: np.asarray(v, np.float64) for k, v in arrays.items()}


def _block_params(p, depth):
  """[{name within block: array}] per layer, for looped or scanned encoders."""
  if any(k.startswith("Transformer/encoderblock/") for k in p):
    stacked = {k[len("Transformer/encoderblock/"):]: v for k, v in p.items()
               if k.startswith("Transformer/encoderblock/")}
    return [{k: v[i] for k, v in stacked.items()} for i in range(depth)]
  return [{k[len(f"Transformer/encoderblock_{i}/"):]: v for k, v in p.items()
           if k.startswith(f"Transformer/encoderblock_{i}/")} for i in range(depth)]


def _depth(p):
  if "Transformer/encoderblock/LayerNorm_0/scale" in p:
    return p["Transformer/encoderblock/LayerNorm_0/scale"].shape[0]
  return len({m[1] for k in p if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})


def _module(block, kind, nth):
  """The nth module of a kind in a block, whatever its counter (pre-linen or linen)."""
  names = sorted({k.split("/")[0] for k in block if k.startswith(kind + "_")},
                 key=lambda n: int(n.rsplit("_", 1)[1]))
  return names[nth]


def attention(x, block, name):
  q = np.einsum("bld,dhk->blhk", x, block[f"{name}/query/kernel"]) + block[f"{name}/query/bias"]
  k = np.einsum("bld,dhk->blhk", x, block[f"{name}/key/kernel"]) + block[f"{name}/key/bias"]
  v = np.einsum("bld,dhk->blhk", x, block[f"{name}/value/kernel"]) + block[f"{name}/value/bias"]
  q = q / np.sqrt(q.shape[-1])
  logits = np.einsum("bqhk,blhk->bhql", q, k)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhql,blhk->bqhk", weights, v)
  return np.einsum("bqhk,hkd->bqd", out, block[f"{name}/out/kernel"]) + block[f"{name}/out/bias"]


def encoder_block(x, block, approximate_gelu):
  ln1, ln2 = _module(block, "LayerNorm", 0), _module(block, "LayerNorm", 1)
  attn, mlp = _module(block, "MultiHeadDotProductAttention", 0), _module(block, "MlpBlock", 0)
  y = layer_norm(x, block[f"{ln1}/scale"], block[f"{ln1}/bias"])
  x = x + attention(y, block, attn)
  y = layer_norm(x, block[f"{ln2}/scale"], block[f"{ln2}/bias"])
  y = gelu(y @ block[f"{mlp}/Dense_0/kernel"] + block[f"{mlp}/Dense_0/bias"], approximate_gelu)
  return x + y @ block[f"{mlp}/Dense_1/kernel"] + block[f"{mlp}/Dense_1/bias"]


def forward(arrays, images_bhwc, *, approximate_gelu: bool = False):
  """(pre-head cls features (B, D), logits (B, C) or None) of a ViT checkpoint."""
  p = _strip(arrays)
  x = np.asarray(images_bhwc, np.float64)
  kernel = p["embedding/kernel"]
  patch = kernel.shape[0]
  b, h, w, c = x.shape
  patches = x.reshape(b, h // patch, patch, w // patch, patch, c)
  x = np.einsum("byixjc,ijcd->byxd", patches, kernel) + p["embedding/bias"]
  x = x.reshape(b, -1, x.shape[-1])
  cls = np.broadcast_to(p["cls"], (b, 1, x.shape[-1]))
  if "Transformer/posembed_input/pos_embedding" in p:
    x = np.concatenate([cls, x], axis=1) + p["Transformer/posembed_input/pos_embedding"]
  else:
    x = np.concatenate([cls, x + p["pos_embedding"]], axis=1)
  for block in _block_params(p, _depth(p)):
    x = encoder_block(x, block, approximate_gelu)
  features = layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])[:, 0]
  pre = features
  if "pre_logits/kernel" in p:
    pre = np.tanh(features @ p["pre_logits/kernel"] + p["pre_logits/bias"])
  logits = pre @ p["head/kernel"] + p["head/bias"] if "head/kernel" in p else None
  return features, logits
