"""The eval input: every test video once, as all its K x S views, in padded batches.

every test video once -> [parse -> K evenly spaced clips -> decode their
frames -> S crops each] (views.video_views) -> batches of videos with all
K*S views, padded with a `mask` so every process runs the same number of
batches. A video that fails to read is dropped (`ignore_errors`) and counted
as skipped: a test video expected but not seen.
"""

from __future__ import annotations

import tensorflow as tf

from cover_jax.evaluation import views
from cover_jax.input import pipeline

def eval_dataset(spec: pipeline.DatasetSpec, *, shard_index: int = 0,
                 num_shards: int = 1) -> tuple[tf.data.Dataset, int]:
  """Multi-view eval batches of videos, padded to equal counts on every process.

  Views stay uint8: a batch of many videos x K*S views is 4x smaller than in
  float32 on the host and on its way to the devices; the eval step normalises
  (evaluation/step.py: multiview_eval_step).

  Returns:
    (dataset, num_batches): batches hold 'video' uint8 (B, V, T, crop, crop, 3)
    with V = K clips x S crops per video (clip-major), 'label' (B,), and 'mask'
    (B,) (1 real video, 0 padding or a skipped video's place).
  """
  cfg = spec.config
  local_batch = cfg.eval_batch_size // num_shards
  per_process = max(spec.source.num_examples(cfg.eval_split, p, num_shards)
                    for p in range(num_shards))
  num_batches = -(-per_process // local_batch)

  def preprocess(raw):
    encoded, label = pipeline.checked_example(spec, raw)
    return {"video": views.video_views(encoded, spec.config, encoded=True,
                                       jpeg_only=spec.source.jpeg_only),
            "label": label,
            "mask": tf.constant(1, tf.int32)}

  ds = spec.source.read(cfg.eval_split, shard_index, num_shards)
  ds = ds.map(pipeline.graph_only(preprocess), num_parallel_calls=pipeline.AUTOTUNE,
              deterministic=True).ignore_errors(log_warning=True)
  views_shape = (views.num_views(cfg), cfg.num_frames, cfg.crop_size, cfg.crop_size, 3)
  padding = tf.data.Dataset.from_tensors({
      "video": tf.zeros(views_shape, tf.uint8), "label": tf.constant(0, tf.int32),
      "mask": tf.constant(0, tf.int32)}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch)
  ds = ds.batch(local_batch, drop_remainder=True)
  return pipeline.with_options(ds).prefetch(pipeline.AUTOTUNE), num_batches
