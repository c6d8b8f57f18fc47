"""Benchmark worker for the PyTorch reference (started by `train_step.py --compare-torch`).

The reference is HuggingFace `transformers`' `TimesformerForVideoClassification`
(the official TimeSformer architecture, divided space-time attention) trained
the way the official code trains it: cross-entropy, backward, global-norm
gradient clipping, AdamW, on a synthetic batch already on the device; bfloat16
configs run under `torch.autocast`. Needs only torch, transformers and NumPy
(`pip install -e ".[bench]"`), no JAX.

Attention (`--attention`). HF's TimeSformer has no SDPA path (transformers
5.23: `attn_implementation="sdpa"` raises "does not support an attention
implementation through torch.nn.functional.scaled_dot_product_attention"); its
`TimesformerSelfAttention` computes `softmax(q k^T * scale) v` with explicit
matmuls ('eager'). 'sdpa' asks transformers for SDPA and, where it refuses,
replaces that module's forward with the same math through
`F.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU);
the worker's ready line says which one ran.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
import transformers

import bench_common

_ARGS = argparse.ArgumentParser(description=__doc__)
_ARGS.add_argument("--config", required=True)
_ARGS.add_argument("--batch", type=int, default=0)
_ARGS.add_argument("--dtype", default="")
_ARGS.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
_ARGS.add_argument("--peak-size", type=int, default=0, help="matmul size for the peak (0: auto)")
_ARGS.add_argument("--attention", default="eager", choices=("eager", "sdpa"),
                   help="HF's explicit-matmul attention, or scaled_dot_product_attention")


def _sdpa_forward(self, hidden_states, output_attentions: bool = False):
  """`TimesformerSelfAttention.forward` through `F.scaled_dot_product_attention`."""
  if output_attentions:
    raise ValueError("the SDPA attention computes no attention probabilities")
  batch, length, width = hidden_states.shape
  qkv = (self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
         .permute(2, 0, 3, 1, 4))
  context = torch.nn.functional.scaled_dot_product_attention(
      qkv[0], qkv[1], qkv[2], dropout_p=self.attn_drop.p if self.training else 0.0,
      scale=self.scale)
  return (context.transpose(1, 2).reshape(batch, length, width),)


def build_model(config: bench_common.BenchConfig, device,
                attention: str = "eager") -> tuple[torch.nn.Module, str]:
  """The HF model in training mode on `device`, and the attention it runs."""
  build = transformers.AutoModelForVideoClassification.from_config
  hf_config = _hf_config(config)
  if attention == "eager":
    return build(hf_config, attn_implementation="eager").to(device).train(), "eager"
  try:
    model, used = build(hf_config, attn_implementation="sdpa"), "sdpa (transformers' own)"
  except ValueError:  # transformers has none for TimeSformer (5.23): the same math, patched in
    model = build(hf_config, attn_implementation="eager")
    for module in model.modules():
      if type(module).__name__ == "TimesformerSelfAttention":
        module.forward = _sdpa_forward.__get__(module)
    used = "sdpa (F.scaled_dot_product_attention patched into TimesformerSelfAttention)"
  return model.to(device).train(), used


def _hf_config(config: bench_common.BenchConfig):
  return transformers.TimesformerConfig(
      image_size=config.image_size, patch_size=config.patch_size, num_frames=config.frames,
      hidden_size=config.width, num_hidden_layers=config.depth,
      num_attention_heads=config.num_heads, intermediate_size=config.mlp_dim,
      num_labels=config.num_classes, attention_type="divided_space_time",
      hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True)


def make_step(config: bench_common.BenchConfig, device, attention: str = "eager"):
  """(a closure running one training step, the attention it runs); the batch lives on `device`."""
  torch.manual_seed(0)
  model, attention = build_model(config, device, attention)
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
  rng = np.random.default_rng(0)
  video = torch.from_numpy(rng.standard_normal(
      (config.batch, config.frames, 3, config.image_size, config.image_size), np.float32)).to(device)
  labels = torch.from_numpy(rng.integers(0, config.num_classes, config.batch)).to(device)
  autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
              if config.dtype == "bfloat16" else None)

  def step():
    optimizer.zero_grad(set_to_none=True)
    if autocast is None:
      loss = model(pixel_values=video, labels=labels).loss
    else:
      with autocast:
        loss = model(pixel_values=video, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    if device.type == "cuda":
      torch.cuda.synchronize()
  return step, attention


def device_memory(device) -> dict:
  """Device memory in bytes after the warm-up steps (None on CPU).

  The peak, what stays between steps (parameters, gradients, AdamW moments,
  the batch) and the device's total.
  """
  if device.type != "cuda":
    return {"peak_bytes": None, "state_bytes": None, "device_bytes": None}
  return {"peak_bytes": torch.cuda.max_memory_allocated(device),
          "state_bytes": torch.cuda.memory_allocated(device),
          "device_bytes": torch.cuda.get_device_properties(device).total_memory}


def matmul_peak(device, dtype: str, size: int) -> dict:
  n = size or (2048 if device.type == "cpu" else 8192)
  a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))

  def run():
    torch.matmul(a, a)
    if device.type == "cuda":
      torch.cuda.synchronize()
  return {f"torch {dtype} {n}^2": bench_common.best_matmul_rate(run, 2.0 * n ** 3)}


def main() -> None:
  args = _ARGS.parse_args()
  channel = bench_common.Channel()
  if args.threads > 0:
    torch.set_num_threads(args.threads)
  config = bench_common.resolve_config(args.config, args.batch, args.dtype)
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  step, attention = make_step(config, device, args.attention)
  for _ in range(3):  # warm-up: allocator, oneDNN primitive caches
    step()
  channel.send({"backend": device.type, "torch": torch.__version__,
                "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                "attention": attention, "compile_s": 0.0, **device_memory(device),
                "peaks": matmul_peak(device, config.dtype, args.peak_size)})
  channel.serve({"video": step})


if __name__ == "__main__":
  sys.exit(main())
