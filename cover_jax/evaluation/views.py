"""A test video's K x S views: the one place they are made (evaluation and predict use it).

K temporal clips x S spatial crops. Video-level accuracy (what papers report
as "K x S views") averages a video's logits over all its views; clip-level
accuracy scores every view on its own.

Temporal clips are evenly spaced over the video, first clip at the start and
last at the end, as in the SlowFast/TimeSformer test loaders; when the video
is too short for K distinct evenly spaced starts, the starts are spread over
the whole video instead and clips loop around its end, so the K clips still
differ (all of them as long as K <= the video's frame count). K = 1 is the
centre clip. `sampling='segment'` takes one clip of the centre frames of T
equal segments. Spatial crops are taken along the longer image axis (left,
centre, right; or top, centre, bottom); S = 1 is the centre crop.

`video_views` turns a video's frames, still encoded as stored or already
decoded, into its views: only the frames the clips use are decoded, then
resized to `eval_short_side` (if set; else kept as stored), enlarged to the
crop if smaller, and cropped.
"""

from __future__ import annotations

import tensorflow as tf

from cover_jax.config import allowed
from cover_jax.input import pipeline


def clip_starts(num_available, num_frames: int, stride: int, num_clips: int) -> tf.Tensor:
  """int32 (num_clips,) first-frame indices of the K evaluation clips."""
  num_available = tf.cast(num_available, tf.int32)
  span = (num_frames - 1) * stride + 1
  room = num_available - span  # last start that needs no looping
  if num_clips == 1:
    return tf.reshape(tf.maximum(room, 0) // 2, [1])
  i = tf.range(num_clips, dtype=tf.float32)
  even = tf.cast(tf.round(i * tf.cast(room, tf.float32) / (num_clips - 1)), tf.int32)
  spread = tf.cast(tf.floor(i * tf.cast(num_available, tf.float32) / num_clips), tf.int32)
  return tf.cond(room + 1 >= num_clips, lambda: even, lambda: spread)


def spatial_crop_offsets(height, width, size: int, num_crops: int) -> tf.Tensor:
  """int32 (num_crops, 2) (top, left) of the S crops of `size` x `size`."""
  if num_crops not in allowed.EVAL_CROPS:
    raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  centre = tf.stack([(height - size) // 2, (width - size) // 2])
  if num_crops == 1:
    return centre[None]
  along_height = height > width
  far = tf.where(along_height, tf.stack([height - size, centre[1]]),
                 tf.stack([centre[0], width - size]))
  near = tf.where(along_height, tf.stack([0, centre[1]]), tf.stack([centre[0], 0]))
  return tf.stack([near, centre, far])


def spatial_views(clips, size: int, num_crops: int) -> tf.Tensor:
  """(K, T, H, W, C) -> (K * S, T, size, size, C), crops of a clip adjacent."""
  shape = tf.shape(clips)
  offsets = spatial_crop_offsets(shape[2], shape[3], size, num_crops)
  crops = []
  for i in range(num_crops):
    top, left = offsets[i, 0], offsets[i, 1]
    crops.append(clips[:, :, top:top + size, left:left + size, :])
  stacked = tf.stack(crops, axis=1)  # (K, S, T, size, size, C)
  return tf.reshape(stacked, tf.concat([[-1], tf.shape(stacked)[2:]], axis=0))


def frame_indices(num_available, cfg) -> tf.Tensor:
  """int32 (K, T): the frames of the K evaluation clips (segment centres for 'segment')."""
  if cfg.get("sampling", "stride") == "segment":
    return pipeline.segment_indices(num_available, cfg.num_frames, 0.5)[None]
  starts = clip_starts(num_available, cfg.num_frames, cfg.stride, cfg.eval_clips)
  offsets = tf.range(cfg.num_frames) * cfg.stride
  return tf.math.floormod(starts[:, None] + offsets[None, :], num_available)


def num_views(cfg) -> int:
  """V = K x S views per test video."""
  clips = 1 if cfg.get("sampling", "stride") == "segment" else cfg.eval_clips
  return clips * cfg.eval_crops


def video_views(frames, cfg, *, encoded: bool, jpeg_only: bool = True,
                indices_kt=None) -> tf.Tensor:
  """uint8 (K * S, T, crop, crop, 3), clip-major: one test video's views.

  Args:
    frames: the video's F frames: encoded (string (F,): JPEG, or any image
      format unless `jpeg_only`) or decoded (uint8 (F, H, W, 3)).
    cfg: the dataset's config (num_frames, stride, sampling, eval_clips,
      eval_crops, eval_short_side, crop_size).
    encoded: whether `frames` are still encoded; each frame the clips use is
      decoded once.
    indices_kt: which frames each clip takes, int32 (K, T); default
      `frame_indices(F, cfg)`.
  """
  if indices_kt is None:
    indices_kt = frame_indices(tf.shape(frames)[0], cfg)
  unique, position = tf.unique(tf.reshape(indices_kt, [-1]))
  picked = tf.gather(frames, unique)
  if encoded:
    picked = pipeline.decode_frames(picked, jpeg_only)
  if cfg.get("eval_short_side", 0):
    picked = pipeline.resize_short_side(picked, cfg.eval_short_side)
  picked = pipeline.at_least(picked, cfg.crop_size)
  clips = tf.reshape(tf.gather(picked, position),
                     tf.concat([tf.shape(indices_kt), tf.shape(picked)[1:]], axis=0))
  return spatial_views(clips, cfg.crop_size, cfg.eval_crops)
