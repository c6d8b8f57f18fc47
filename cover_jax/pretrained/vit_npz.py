"""ViT image checkpoints (.npz) -> our TimeSformer layout: the standard TimeSformer/CoVeR start.

Two layouts are read, both flat ``/``-joined keys of a Flax parameter tree:

- google-research/vision_transformer: pre-linen module names with one global
  counter per block (``Transformer/encoderblock_N/{LayerNorm_0,
  MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3/Dense_0|1}``), the
  position embedding at ``Transformer/posembed_input/pos_embedding`` with a
  slot for the cls token, ``cls``, ``embedding``, ``Transformer/encoder_norm``,
  ``pre_logits`` (ImageNet-21k models) and ``head``.
- big_vision: the same tree with linen names (``LayerNorm_0,
  MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0``), possibly nested
  under ``params/`` or ``opt/target/`` (training checkpoints), the position
  embedding at the top (``pos_embedding``) *without* a cls slot, and, for
  scanned models, a single ``Transformer/encoderblock`` whose arrays carry a
  leading layer axis.

Layouts: Flax's attention kernels are already split by head —
query/key/value (D, H, D/H) stack into our ``qkv_kernel`` (D, 3, H, D/H), and
``out`` (H, D/H, D) *is* our ``proj_kernel`` — so the number of heads comes
from the shapes. The patch kernel (p, p, 3, D) and dense kernels (in, out) are
ours as they are.

What `fit.py` then does with an image model (as the official TimeSformer's
``load_pretrained``): temporal attention and its norm are copies of the same
block's spatial ones, ``temporal_fc`` and the time embedding are zero, the
position embedding is resampled bilinearly to the new grid (big_vision's and
vision_transformer's ``scipy.ndimage.zoom(order=1)``) and the heads are new.
With ``temporal_fc`` zero, a clip of T identical frames then gives exactly the
ViT's features of that frame.

Flax's ViT uses tanh-approximate GELU; our model (like the official
TimeSformer, which starts from the same weights converted to PyTorch) uses
the exact erf GELU. The difference is below fine-tuning noise.
"""

from __future__ import annotations

import re

import numpy as np

from cover_jax.pretrained.weights import CheckpointInfo, PretrainedError, PretrainedWeights

_PREFIXES = ("opt/target/", "params/")
_BLOCK_RE = re.compile(r"^Transformer/encoderblock(?:_(\d+))?/(.+)$")
_MODULE_RE = re.compile(r"^(LayerNorm|MultiHeadDotProductAttention|MlpBlock)_(\d+)/(.+)$")


def convert(arrays: dict[str, np.ndarray], path: str, fmt: str) -> PretrainedWeights:
  """Our-layout weights of a ViT .npz (either layout; see the module docstring)."""
  out = PretrainedWeights(path=path, format=fmt, params={}, sources={}, is_image_model=True,
                          posemb_resize="bilinear", info=CheckpointInfo(heads_from="the attention kernel shapes"))
  tree, prefix = _strip_prefix(arrays, out)
  consumed: set[str] = set()

  def take(key: str) -> np.ndarray:
    consumed.add(key)
    return np.asarray(tree[key], np.float32)

  def put(ours: str, value: np.ndarray, *keys: str) -> None:
    out.params[ours] = value
    out.sources[ours] = " + ".join(prefix + k for k in keys)

  _convert_embeddings(tree, take, put, out)
  for index, block in sorted(_blocks(tree).items()):
    _convert_block(index, block, take, put)
  if "Transformer/encoder_norm/scale" in tree:
    put("backbone/norm/scale", take("Transformer/encoder_norm/scale"), "Transformer/encoder_norm/scale")
    put("backbone/norm/bias", take("Transformer/encoder_norm/bias"), "Transformer/encoder_norm/bias")
  _convert_head(tree, take, put, out, prefix)
  for key in sorted(set(tree) - consumed):
    reason = _drop_reason(key)
    if reason:
      out.dropped[prefix + key] = reason
    else:
      out.unexpected.append(prefix + key)
  if out.info.num_heads is None and "backbone/blocks/0/attn/qkv_kernel" in out.params:
    out.info.num_heads = int(out.params["backbone/blocks/0/attn/qkv_kernel"].shape[2])
  return out


def _strip_prefix(arrays, out: PretrainedWeights) -> tuple[dict[str, np.ndarray], str]:
  """Drops a training checkpoint's nesting (`opt/target/`, `params/`); the rest is dropped."""
  for prefix in _PREFIXES:
    if any(k.startswith(prefix) for k in arrays):
      for key in arrays:
        if not key.startswith(prefix):
          out.dropped[key] = "not model parameters (optimizer or training state)"
      return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, prefix
  return dict(arrays), ""


def _convert_embeddings(tree, take, put, out: PretrainedWeights) -> None:
  if "embedding/kernel" in tree:
    put("backbone/patch_kernel", take("embedding/kernel"), "embedding/kernel")
    put("backbone/patch_bias", take("embedding/bias"), "embedding/bias")
  if "cls" in tree:
    put("backbone/cls_token", take("cls").reshape(-1), "cls")
  else:
    out.notes.append(
        "the checkpoint has no 'cls' token: it is a ViT pooled without one (big_vision "
        "pool_type 'gap' or 'map'), while TimeSformer classifies from the cls token; start "
        "from a ViT trained with a cls token (pool_type 'tok', as the ViT paper's models)")
  for key in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding",
              "pos_embedding"):
    if key in tree:
      put("backbone/pos_embed", _with_cls_slot(take(key)[0], key), key)
      return


def _with_cls_slot(pos_ld: np.ndarray, key: str) -> np.ndarray:
  """(1 + N, D) with slot 0 for the cls token; big_vision adds none to cls (a zero slot)."""
  length = pos_ld.shape[0]
  if _is_square(length):
    return np.concatenate([np.zeros_like(pos_ld[:1]), pos_ld])
  if _is_square(length - 1):
    return pos_ld
  raise PretrainedError(f"{key}: {length} position embeddings are neither a square grid nor "
                        "a square grid plus the cls slot")


def _is_square(n: int) -> bool:
  return n > 0 and int(round(n ** 0.5)) ** 2 == n


def _blocks(tree) -> dict[int, dict[str, np.ndarray]]:
  """{layer: {key within the block: array}}, unstacking a scanned encoder."""
  blocks: dict[int, dict] = {}
  for key, value in tree.items():
    match = _BLOCK_RE.match(key)
    if not match:
      continue
    inner = _linen_name(match[2])
    if match[1] is not None:
      blocks.setdefault(int(match[1]), {})[inner] = (key, value)
    else:  # scanned: one array per parameter with a leading layer axis
      for layer in range(value.shape[0]):
        blocks.setdefault(layer, {})[inner] = (key, value, layer)
  return blocks


def _linen_name(inner: str) -> str:
  """Pre-linen per-block counters (LayerNorm_0, ..._1, LayerNorm_2, MlpBlock_3) -> linen ones."""
  match = _MODULE_RE.match(inner)
  if not match:
    return inner
  kind, index, rest = match[1], int(match[2]), match[3]
  if kind == "LayerNorm":
    return f"LayerNorm_{0 if index == 0 else 1}/{rest}"
  return f"{kind}_0/{rest}"


def _convert_block(index: int, block: dict, take, put) -> None:
  def get(name: str) -> tuple[np.ndarray, str]:
    entry = block[name]
    array = take(entry[0])
    if len(entry) == 3:  # scanned: this layer's slice
      return array[entry[2]], f"{entry[0]}[{entry[2]}]"
    return array, entry[0]

  ours = f"backbone/blocks/{index}/"
  for linen, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_1", "norm2")):
    for param in ("scale", "bias"):
      if f"{linen}/{param}" in block:
        put(ours + f"{norm}/{param}", *get(f"{linen}/{param}"))
  attn = "MultiHeadDotProductAttention_0/"
  if all(f"{attn}{p}/kernel" in block for p in ("query", "key", "value")):
    kernels = [get(f"{attn}{p}/kernel") for p in ("query", "key", "value")]
    biases = [get(f"{attn}{p}/bias") for p in ("query", "key", "value")]
    put(ours + "attn/qkv_kernel", np.stack([k for k, _ in kernels], axis=1), *[n for _, n in kernels])
    put(ours + "attn/qkv_bias", np.stack([b for b, _ in biases], axis=0), *[n for _, n in biases])
  if f"{attn}out/kernel" in block:
    put(ours + "attn/proj_kernel", *get(f"{attn}out/kernel"))
    put(ours + "attn/proj_bias", *get(f"{attn}out/bias"))
  for dense, fc in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
    for param in ("kernel", "bias"):
      if f"MlpBlock_0/{dense}/{param}" in block:
        put(ours + f"mlp/{fc}/{param}", *get(f"MlpBlock_0/{dense}/{param}"))


def _convert_head(tree, take, put, out: PretrainedWeights, prefix: str) -> None:
  if "head/kernel" not in tree or tree["head/kernel"].shape[-1] == 0:
    return
  if "pre_logits/kernel" in tree:
    # The head reads tanh(pre_logits(x)); without that layer it is meaningless.
    for key in ("head/kernel", "head/bias"):
      take(key)
      out.dropped[prefix + key] = ("reads the output of the pre_logits layer, which TimeSformer "
                                   "does not have; fine-tuning replaces both")
    return
  put("heads/head/kernel", take("head/kernel"), "head/kernel")
  put("heads/head/bias", take("head/bias"), "head/bias")


def _drop_reason(key: str) -> str | None:
  if key.startswith("pre_logits/"):
    return "representation layer before the ImageNet head; fine-tuning drops it (as big_vision)"
  if key.startswith("MAPHead_0/"):
    return "attention-pooling head; TimeSformer classifies from the cls token"
  return None
