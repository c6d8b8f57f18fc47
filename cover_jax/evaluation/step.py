"""Per-dataset multi-view evaluation of a test split (the step and the loop over batches).

A batch holds many videos, each with all its V = K x S views (views.py), so a
device runs (videos per device) x V clips through the backbone at once; the
counts (counts.py) are summed on the host after one sync for the whole split.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from cover_jax.evaluation import counts
from cover_jax.input import device


def multiview_eval_step(params, batch: dict, *, graphdef, mean, std) -> dict:
  """Counts for one batch {'video': uint8 (B, V, T, H, W, 3), 'label': (B,), 'mask': (B,)}.

  The head is chosen by the batch's `dataset_index` inside the step, as in
  training (models/cover.py). `mean`/`std`: config.input's.
  """
  model = nnx.merge(graphdef, params)
  clips, (b, v) = _views_as_clips(batch["video"], mean, std)

  def view_counts(name, logits):
    del name  # every head's logits are counted alike
    return counts.view_counts(logits.reshape(b, v, -1), batch["label"], batch["mask"])
  return model(clips, batch["dataset_index"], reduce=view_counts)


def view_logits(params, batch: dict, *, graphdef, dataset: str, mean, std) -> jax.Array:
  """float32 (B, V, C): the logits of every view of a batch of videos through `dataset`'s head.

  What `multiview_eval_step` counts, for one named head (predict uses it).
  """
  model = nnx.merge(graphdef, params)
  clips, (b, v) = _views_as_clips(batch["video"], mean, std)
  return model(clips, dataset).reshape(b, v, -1)


def _views_as_clips(video_bvthwc, mean, std):
  """uint8 (B, V, T, H, W, 3) -> normalised (B * V, T, H, W, 3) clips, and (B, V)."""
  video = device.normalise(video_bvthwc, mean, std)
  b, v = video.shape[:2]
  return video.reshape((b * v,) + video.shape[2:]), (b, v)


def evaluate_dataset(eval_fn: Callable, params, batches, dataset_index: int,
                     to_device: Callable, expected_videos: int | None = None) -> dict:
  """Clip- and video-level accuracy over one dataset's test split.

  Args:
    eval_fn: jitted `multiview_eval_step` (params, batch) -> summed counts.
    batches: iterable of host batches {'video', 'label', 'mask'}.
    dataset_index: the dataset's index among the model's heads.
    to_device: host batch -> global device arrays.
    expected_videos: the split's size; the shortfall is reported as skipped.
  """
  totals = dict.fromkeys(counts.COUNT_KEYS, 0.0)
  pending = [eval_fn(params, to_device(batch, dataset_index)) for batch in batches]
  for batch_counts in jax.device_get(pending):  # one host sync for the whole split
    for key in totals:
      totals[key] += float(batch_counts[key])
  out = counts.accuracies(totals)
  if expected_videos is not None:
    out["skipped_records"] = max(expected_videos - out["num_videos"], 0)
  return out
