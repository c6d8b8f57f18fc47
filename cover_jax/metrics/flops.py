"""Analytic matmul FLOPs of the TimeSformer / CoVeR forward pass and train step.

Model FLOPs count every matrix multiplication of the model (2 FLOPs per
multiply-add): the dense projections, the attention logits (q.k) and the
attention-weighted sums (w.v), the patch embedding and the head. Elementwise
work (LayerNorm, GELU, softmax, the optimizer) is left out, as in the usual
MFU convention (PaLM, appendix B).

Only matmuls whose result reaches the output are counted: the model's output
is the cls token, so the last block's MLP runs on the cls token alone (XLA
removes the MLP of the last block's patch tokens as dead code; eager PyTorch
computes it and throws it away).

A training step costs 3x the forward matmuls (the backward pass computes the
gradient of each matmul with respect to both operands), except for the patch
embedding, whose input (the pixels) needs no gradient: 2x there.

Pure Python on purpose: the benchmark driver and the PyTorch side use it
without importing JAX.
"""

from __future__ import annotations

import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class StepShape:
  """What a step computes: model dimensions and the input batch."""
  width: int
  depth: int
  mlp_dim: int
  patch_size: int
  batch: int
  frames: int
  height: int
  width_px: int
  num_classes: int
  attention_type: str = "divided_space_time"

  @property
  def patches(self) -> int:
    """N: patches per frame."""
    return (self.height // self.patch_size) * (self.width_px // self.patch_size)


def _dense(tokens: int, d_in: int, d_out: int) -> int:
  return 2 * tokens * d_in * d_out


def _attention(sequences: int, length: int, width: int) -> int:
  """q.k logits and weights.v over `sequences` sequences of `length` (all heads)."""
  return 2 * 2 * sequences * length * length * width


def _self_attention(sequences: int, length: int, width: int) -> int:
  """Fused qkv, the attention itself, and the output projection.

  Over a single token (the temporal attention of an image) the output is the
  value projection (its softmax weight is exactly 1): v and the output
  projection only.
  """
  tokens = sequences * length
  if length == 1:
    return 2 * _dense(tokens, width, width)
  return (_dense(tokens, width, 3 * width) + _attention(sequences, length, width)
          + _dense(tokens, width, width))


def block_forward_flops(s: StepShape, last: bool = False) -> int:
  """Matmul FLOPs of one transformer block, per clip (`last`: only cls tokens leave it)."""
  n, t, d = s.patches, s.frames, s.width
  if s.attention_type == "divided_space_time":
    temporal = _self_attention(n, t, d) + _dense(n * t, d, d)  # + temporal_fc
    spatial = _self_attention(t, n + 1, d)  # each frame: [cls, N patches]
    mlp_tokens, cls_tokens = n * t + 1, 1  # the cls token is averaged over frames
    attention = temporal + spatial
  elif s.attention_type == "joint_space_time":
    mlp_tokens, cls_tokens = 1 + n * t, 1
    attention = _self_attention(1, mlp_tokens, d)
  elif s.attention_type == "space_only":
    mlp_tokens, cls_tokens = t * (n + 1), t  # one cls token per frame, averaged at the end
    attention = _self_attention(t, n + 1, d)
  else:
    raise ValueError(f"unknown attention_type {s.attention_type!r}")
  return attention + 2 * _dense(cls_tokens if last else mlp_tokens, d, s.mlp_dim)


def patch_embedding_flops(s: StepShape) -> int:
  """Per clip: a p x p x 3 -> D projection of every patch of every frame."""
  return _dense(s.patches * s.frames, s.patch_size ** 2 * 3, s.width)


def forward_flops(s: StepShape) -> int:
  """Matmul FLOPs of the forward pass on the whole batch."""
  blocks = (s.depth - 1) * block_forward_flops(s) + block_forward_flops(s, last=True)
  per_clip = patch_embedding_flops(s) + blocks + _dense(1, s.width, s.num_classes)
  return s.batch * per_clip


def train_step_flops(s: StepShape) -> int:
  """Forward + backward matmul FLOPs of one training step on the batch."""
  return 3 * forward_flops(s) - s.batch * patch_embedding_flops(s)


# `%name = f32[2,16,64]{2,1,0} op(...)`: an instruction's name and array shape.
_INSTRUCTION_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\w+\[([\d,]*)\]")
_DOT_OPERANDS_RE = re.compile(r"\sdot\(%?([\w.\-]+), %?[\w.\-]+\)")
_LHS_CONTRACTING_RE = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")


def hlo_dot_flops(hlo_text: str) -> int:
  """FLOPs of the `dot` instructions in (optimised) HLO text: 2 * |out| * |contracted|.

  The cross-check of the analytic count against what XLA actually runs. Dots
  that a backend turns into library calls (cuBLAS, cuDNN on GPU) are no longer
  `dot` instructions and are not counted: use it on CPU.
  """
  lines = hlo_text.splitlines()
  shapes = {}
  for line in lines:
    match = _INSTRUCTION_RE.match(line)
    if match:
      shapes[match[1]] = [int(x) for x in match[2].split(",") if x]
  total = 0
  for line in lines:
    operands = _DOT_OPERANDS_RE.search(line)
    if not operands:
      continue
    out_shape = shapes[_INSTRUCTION_RE.match(line)[1]]
    lhs_shape = shapes[operands[1]]
    contracted = [int(i) for i in _LHS_CONTRACTING_RE.search(line)[1].split(",") if i]
    total += 2 * math.prod(out_shape) * math.prod(lhs_shape[i] for i in contracted)
  return total
