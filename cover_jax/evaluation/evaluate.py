"""Per-dataset multi-view evaluation on the test splits, and the final accuracy table.

Each test video is seen as V = K temporal clips x S spatial crops (the
dataset's `eval_clips` x `eval_crops`; pipeline.eval_dataset). Two accuracies
come out, under names that cannot be confused:

  clip_top1 / clip_top5    every view scored on its own ("clip-level", what a
                           1x1 validation loop reports)
  video_top1 / video_top5  the views' logits averaged per video, then scored
                           ("video-level", what papers report as K x S views)

A batch holds many videos, each with all its views, so a device runs
(videos per device) x V clips through the backbone at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

_COUNTS = ("clip_top1", "clip_top5", "clip_count", "video_top1", "video_top5", "video_loss",
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


def normalise(video_uint8, mean, std):
  """uint8 pixels -> float32 (x / 255 - mean) / std, as the training pipeline normalises."""
  return ((video_uint8.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32))
          / jnp.asarray(std, jnp.float32))


def multiview_eval_step(params, batch: dict, *, graphdef, heads, mean, std) -> dict:
  """Counts for one batch {'video': uint8 (B, V, T, H, W, 3), 'label': (B,), 'mask': (B,)}.

  `heads` is train_step.HeadSettings; the head is chosen by the batch's
  `dataset_index` inside the step, as in training. `mean`/`std`: config.input's.
  """
  model = nnx.merge(graphdef, params)
  video = normalise(batch["video"], mean, std)
  b, v = video.shape[:2]
  features = model.backbone(video.reshape((b * v,) + video.shape[2:]), deterministic=True)

  def branch(i):
    def f(features, labels):
      logits = model.heads[heads.dataset_names[i]](features)
      return view_counts(logits.reshape(b, v, -1), labels, batch["mask"])
    return f
  branches = [branch(i) for i in range(len(heads.dataset_names))]
  return jax.lax.switch(batch["dataset_index"], branches, features, batch["label"])


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
  totals = dict.fromkeys(_COUNTS, 0.0)
  pending = [eval_fn(params, to_device(batch, dataset_index)) for batch in batches]
  for counts in jax.device_get(pending):  # one host sync for the whole split
    for key in totals:
      totals[key] += float(counts[key])
  clips, videos = max(totals["clip_count"], 1.0), max(totals["video_count"], 1.0)
  out = {"clip_top1": totals["clip_top1"] / clips, "clip_top5": totals["clip_top5"] / clips,
         "video_top1": totals["video_top1"] / videos,
         "video_top5": totals["video_top5"] / videos, "video_loss": totals["video_loss"] / videos,
         "num_videos": int(totals["video_count"]), "num_clips": int(totals["clip_count"])}
  if expected_videos is not None:
    out["skipped_records"] = max(expected_videos - out["num_videos"], 0)
  return out


def scalars(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
  """`eval/<dataset>/<metric>` for the metric writers (counts of views left out)."""
  return {f"eval/{name}/{key}": float(value) for name, r in results.items()
          for key, value in r.items() if key not in ("num_videos", "num_clips")}


def format_line(results: Mapping[str, Mapping[str, float]]) -> str:
  return "  ".join(f"{n}: clip_top1 {r['clip_top1']:.3f} video_top1 {r['video_top1']:.3f} "
                   f"video_top5 {r['video_top5']:.3f}" for n, r in results.items())


def format_table(results: Mapping[str, Mapping[str, float]], num_classes: Mapping[str, int],
                 train_top1: Mapping[str, float], views: Mapping[str, str]) -> str:
  """A per-dataset accuracy table for the terminal; `views` is 'KxS' per dataset."""
  header = (f"{'dataset':<12} {'classes':>7} {'chance':>7} {'train top1':>10} {'views':>5} "
            f"{'clip top1':>9} {'video top1':>10} {'video top5':>10} {'videos':>7} "
            f"{'skipped':>7}")
  lines = [header, "-" * len(header)]
  for name in sorted(results):
    r = results[name]
    train = f"{train_top1[name]:.1%}" if name in train_top1 else "-"
    lines.append(f"{name:<12} {num_classes[name]:>7} {1 / num_classes[name]:>7.1%} "
                 f"{train:>10} {views[name]:>5} {r['clip_top1']:>9.1%} {r['video_top1']:>10.1%} "
                 f"{r['video_top5']:>10.1%} {r['num_videos']:>7} "
                 f"{r.get('skipped_records', 0):>7}")
  lines.append("(views: K clips x S crops per test video; clip top1: each view scored alone;\n"
               " video top1/top5: the views' logits averaged per video, the number papers report;\n"
               " train: mean over the last logging window)")
  return "\n".join(lines)
