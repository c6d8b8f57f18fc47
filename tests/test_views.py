"""Multi-view evaluation sampling: K temporal clips x S spatial crops."""

import numpy as np
import pytest
import tensorflow as tf

from cover_jax.config import defaults
from cover_jax.evaluation import views


def _starts(available, frames, stride, clips):
  return views.clip_starts(available, frames, stride, clips).numpy().tolist()


def test_evenly_spaced_from_first_to_last_possible_start():
  # 4 frames at stride 4 span 13 frames; a 40-frame video leaves starts 0..27.
  assert _starts(40, 4, 4, 4) == [0, 9, 18, 27]
  assert _starts(40, 4, 4, 2) == [0, 27]


def _indexed_frames(available, height=1, width=1):
  """uint8 frames whose every pixel holds the frame's index (and its column, in channel 1)."""
  frames = np.zeros((available, height, width, 3), np.uint8)
  frames[..., 0] = np.arange(available)[:, None, None]
  frames[..., 1] = np.arange(width)[None, None, :]
  return frames


@pytest.mark.parametrize("clips", [1, 4])
def test_the_views_take_the_frames_of_the_temporal_clips(clips):
  cfg = defaults.dataset_config(num_frames=4, stride=4, eval_clips=clips, crop_size=1)
  for available in (13, 16, 40, 5):
    got = views.video_views(_indexed_frames(available), cfg, encoded=False)[..., 0, 0, 0]
    starts = np.asarray(_starts(available, 4, 4, clips))
    want = (starts[:, None] + 4 * np.arange(4)[None, :]) % available
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(views.frame_indices(available, cfg), want)


def test_one_clip_is_the_centre_clip():
  assert _starts(16, 4, 4, 1) == [1] and _starts(5, 4, 4, 1) == [0]


@pytest.mark.parametrize("available", [4, 8, 13, 14])
def test_short_videos_still_get_distinct_clips(available):
  starts = _starts(available, 4, 4, 4)
  assert len(set(starts)) == 4 and all(0 <= s < available for s in starts)


def test_more_clips_than_frames_use_every_frame_as_a_start():
  assert sorted(set(_starts(3, 4, 4, 4))) == [0, 1, 2]


def test_temporal_clips_loop_and_keep_stride():
  cfg = defaults.dataset_config(num_frames=3, stride=2, eval_clips=2)
  np.testing.assert_array_equal(views.frame_indices(8, cfg), [[0, 2, 4], [3, 5, 7]])
  cfg.eval_clips = 3
  np.testing.assert_array_equal(views.frame_indices(3, cfg), [[0, 2, 1], [1, 0, 2], [2, 1, 0]])


@pytest.mark.parametrize("height, width, expected", [
    (32, 48, [(0, 0), (0, 8), (0, 16)]),    # landscape: left, centre, right
    (48, 32, [(0, 0), (8, 0), (16, 0)]),    # portrait: top, centre, bottom
    (40, 40, [(4, 0), (4, 4), (4, 8)]),     # square: along the width
])
def test_three_crops_run_along_the_longer_axis(height, width, expected):
  offsets = views.spatial_crop_offsets(height, width, 32, 3).numpy()
  assert [tuple(o) for o in offsets] == expected


def test_views_are_clip_major():
  # Channel 0 = frame index, channel 1 = column: identifies clip and crop.
  cfg = defaults.dataset_config(num_frames=4, stride=2, eval_clips=2, eval_crops=3,
                                crop_size=32)
  out = views.video_views(_indexed_frames(16, 32, 48), cfg, encoded=False).numpy()
  assert out.shape == (6, 4, 32, 32, 3)
  np.testing.assert_array_equal(out[:, 0, 0, 0, 0], [0, 0, 0, 9, 9, 9])
  np.testing.assert_array_equal(out[:, 0, 0, 0, 1], [0, 8, 16, 0, 8, 16])


def test_encoded_and_decoded_frames_give_the_same_views_inside_tf_data():
  frames = np.random.default_rng(0).integers(0, 256, (10, 36, 40, 3), np.uint8)
  encoded = tf.stack([tf.io.encode_png(f) for f in frames])
  cfg = defaults.dataset_config(num_frames=4, stride=2, eval_clips=3, eval_crops=3,
                                crop_size=32)
  ds = tf.data.Dataset.from_tensors(encoded).map(
      lambda e: views.video_views(e, cfg, encoded=True, jpeg_only=False))
  got = next(iter(ds)).numpy()
  assert got.shape == (9, 4, 32, 32, 3)
  np.testing.assert_array_equal(got, views.video_views(frames, cfg, encoded=False).numpy())


def test_only_one_or_three_crops():
  with pytest.raises(ValueError, match="1 or 3"):
    views.spatial_crop_offsets(32, 32, 32, 2)
