"""A checkpoint's weights in our parameter layout, and what is known about them.

Every source format (ViT ``.npz``, official TimeSformer, HuggingFace, our own
Orbax checkpoints) is converted into one `PretrainedWeights`: flat
``/``-joined paths of our model's parameters (``backbone/blocks/3/attn/
qkv_kernel``, ``heads/<name>/kernel``) with arrays already in our layouts, at
the checkpoint's *own* grid and frame count. Fitting them to a configured
model (resizing embeddings, inflating an image model, choosing heads, and
reporting every mismatch) is `fit.py`'s job.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

class PretrainedError(ValueError):
  """Pretrained weights that cannot be loaded; the message says why and how to fix it."""


# Released TimeSformer and ViT checkpoints take [0, 1] frames normalised with
# mean = std = 0.5 (i.e. [-1, 1]).
HALF = (0.5, 0.5, 0.5)


@dataclasses.dataclass
class CheckpointInfo:
  """What a checkpoint says about itself, beyond its arrays (None: unknown)."""
  num_heads: int | None = None
  heads_from: str = ""                 # where num_heads came from, for messages
  image_size: int | None = None
  num_frames: int | None = None        # frames the checkpoint was trained with
  stride: int | None = None            # temporal stride (official: SAMPLING_RATE)
  attention_type: str | None = None
  mean: tuple[float, ...] = HALF
  std: tuple[float, ...] = HALF
  class_names: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # head -> names
  dataset: str | None = None           # the dataset its (single) head was trained on
  config: dict | None = None           # our own checkpoints: the training config (as JSON)


@dataclasses.dataclass
class PretrainedWeights:
  """Arrays in our layout plus the bookkeeping needed for good error messages."""
  path: str
  format: str
  params: dict[str, np.ndarray]        # our flat path -> array
  sources: dict[str, str]              # our flat path -> the checkpoint key it came from
  unexpected: list[str] = dataclasses.field(default_factory=list)  # keys with no place in our model
  dropped: dict[str, str] = dataclasses.field(default_factory=dict)  # keys left out on purpose -> why
  notes: list[str] = dataclasses.field(default_factory=list)  # hints appended to mismatch errors
  is_image_model: bool = False         # a ViT: temporal parts are inflated from spatial ones
  posemb_resize: str = "nearest"       # how this source resizes its position embedding
  info: CheckpointInfo = dataclasses.field(default_factory=CheckpointInfo)

  def head_names(self) -> list[str]:
    return sorted({k.split("/")[1] for k in self.params if k.startswith("heads/")})

  def num_classes(self, head: str) -> int:
    return int(self.params[f"heads/{head}/bias"].shape[0])


@dataclasses.dataclass(frozen=True)
class CheckpointDims:
  width: int
  depth: int
  mlp_dim: int | None
  patch_size: int
  num_heads: int | None

  def describe(self) -> str:
    mlp = f", MLP {self.mlp_dim}" if self.mlp_dim else ""
    heads = f", {self.num_heads} heads" if self.num_heads else ""
    return (f"{self.depth} layers of width {self.width} (patch {self.patch_size}{mlp}{heads})")


_BLOCK_RE = re.compile(r"^backbone/blocks/(\d+)/")


def checkpoint_dims(params: dict[str, np.ndarray]) -> CheckpointDims | None:
  """Width, depth, MLP size, patch size (and heads, known from our layout) of converted weights."""
  if "backbone/patch_kernel" not in params:
    return None
  kernel = params["backbone/patch_kernel"]
  depth = len({int(m.group(1)) for k in params if (m := _BLOCK_RE.match(k))})
  fc1 = params.get("backbone/blocks/0/mlp/fc1/kernel")
  qkv = params.get("backbone/blocks/0/attn/qkv_kernel")
  return CheckpointDims(width=int(kernel.shape[-1]), depth=depth,
                        mlp_dim=None if fc1 is None else int(fc1.shape[-1]),
                        patch_size=int(kernel.shape[0]),
                        num_heads=None if qkv is None else int(qkv.shape[2]))


def flatten(tree, prefix: str = "") -> dict[str, object]:
  """Nested dicts -> {'a/b/c': leaf}; keys are str()-ed (NNX list indices are ints)."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, path + "/"))
    else:
      out[path] = value
  return out
