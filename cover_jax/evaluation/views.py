"""Multi-view evaluation: K temporal clips x S spatial crops of one video.

Video-level accuracy (what papers report as "K x S views") averages a video's
logits over all its views; clip-level accuracy scores every view on its own.

Temporal clips are evenly spaced over the video, first clip at the start and
last at the end, as in the SlowFast/TimeSformer test loaders; when the video
is too short for K distinct evenly spaced starts, the starts are spread over
the whole video instead and clips loop around its end, so the K clips still
differ (all of them as long as K <= the video's frame count). K = 1 is the
centre clip. Spatial crops are taken along the longer
image axis (left, centre, right; or top, centre, bottom); S = 1 is the centre
crop.
"""

from __future__ import annotations

import tensorflow as tf

from cover_jax.config import allowed


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


def temporal_views(frames, num_frames: int, stride: int, num_clips: int) -> tf.Tensor:
  """(F, H, W, C) -> (K, T, H, W, C): the K clips, looping short videos."""
  available = tf.shape(frames)[0]
  starts = clip_starts(available, num_frames, stride, num_clips)
  offsets = tf.range(num_frames) * stride
  indices = tf.math.floormod(starts[:, None] + offsets[None, :], available)
  return tf.gather(frames, indices)


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


def multi_view(frames, *, num_frames: int, stride: int, num_clips: int, num_crops: int,
               size: int) -> tf.Tensor:
  """All K x S views of one video, (K * S, T, size, size, C), clip-major."""
  return spatial_views(temporal_views(frames, num_frames, stride, num_clips), size, num_crops)
