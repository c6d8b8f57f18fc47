"""Clip- and video-level hit counts of a batch of multi-view logits.

Each test video is seen as V = K temporal clips x S spatial crops. Two
accuracies come out, under names that cannot be confused:

  clip_top1 / clip_top5    every view scored on its own ("clip-level", what a
                           1x1 validation loop reports)
  video_top1 / video_top5  the views' logits averaged per video, then scored
                           ("video-level", what papers report as K x S views)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

COUNT_KEYS = ("clip_top1", "clip_top5", "clip_count", "video_top1", "video_top5", "video_loss",
           "video_count")


def _hits(logits_nc, labels_n):
  """float (N,) top-1 and top-5 hits."""
  k = min(5, logits_nc.shape[-1])
  top_k = jax.lax.top_k(logits_nc, k)[1]
  return ((top_k[:, 0] == labels_n).astype(jnp.float32),
          (top_k == labels_n[:, None]).any(axis=-1).astype(jnp.float32))


def view_counts(logits_bvc, labels_b, mask_b) -> dict:
  """Summed clip-level and video-level hits over the real videos of a batch."""
  b, v, c = logits_bvc.shape
  mask = mask_b.astype(jnp.float32)
  clip1, clip5 = _hits(logits_bvc.reshape(b * v, c), jnp.repeat(labels_b, v))
  video_logits = logits_bvc.mean(axis=1)
  video1, video5 = _hits(video_logits, labels_b)
  loss = optax.softmax_cross_entropy_with_integer_labels(video_logits, labels_b)
  clip_mask = jnp.repeat(mask, v)
  return {"clip_top1": (clip1 * clip_mask).sum(), "clip_top5": (clip5 * clip_mask).sum(),
          "clip_count": clip_mask.sum(), "video_top1": (video1 * mask).sum(),
          "video_top5": (video5 * mask).sum(), "video_loss": (loss * mask).sum(),
          "video_count": mask.sum()}


def accuracies(totals: dict) -> dict:
  """Summed `view_counts` of a split -> its clip- and video-level accuracies."""
  clips, videos = max(totals["clip_count"], 1.0), max(totals["video_count"], 1.0)
  return {"clip_top1": totals["clip_top1"] / clips, "clip_top5": totals["clip_top5"] / clips,
          "video_top1": totals["video_top1"] / videos,
          "video_top5": totals["video_top5"] / videos, "video_loss": totals["video_loss"] / videos,
          "num_videos": int(totals["video_count"]), "num_clips": int(totals["clip_count"])}
