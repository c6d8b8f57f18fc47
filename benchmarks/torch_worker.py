"""Benchmark worker for the PyTorch reference (started by `train_step.py --compare-torch`).

The reference is HuggingFace `transformers`' `TimesformerForVideoClassification`
(the official TimeSformer architecture, divided space-time attention) trained
the way the official code trains it: cross-entropy, backward, global-norm
gradient clipping, AdamW, on a synthetic batch already on the device. Needs
only torch, transformers and NumPy (`pip install -e ".[bench]"`), no JAX.
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


def build_model(config: bench_common.BenchConfig, device) -> torch.nn.Module:
  hf_config = transformers.TimesformerConfig(
      image_size=config.image_size, patch_size=config.patch_size, num_frames=config.frames,
      hidden_size=config.width, num_hidden_layers=config.depth,
      num_attention_heads=config.num_heads, intermediate_size=config.mlp_dim,
      num_labels=config.num_classes, attention_type="divided_space_time",
      hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True)
  return transformers.TimesformerForVideoClassification(hf_config).to(device).train()


def make_step(config: bench_common.BenchConfig, device):
  """A closure running one training step; the batch lives on `device`."""
  torch.manual_seed(0)
  model = build_model(config, device)
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
  return step


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
  step = make_step(config, device)
  for _ in range(3):  # warm-up: allocator, oneDNN primitive caches
    step()
  channel.send({"backend": device.type, "torch": torch.__version__,
                "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                "compile_s": 0.0, "peaks": matmul_peak(device, config.dtype, args.peak_size)})
  channel.serve({"video": step})


if __name__ == "__main__":
  sys.exit(main())
