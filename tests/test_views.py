"""Multi-view evaluation sampling: K temporal clips x S spatial crops."""

import numpy as np
import pytest
import tensorflow as tf

from cover_jax.config import defaults
from cover_jax.input import pipeline
from cover_jax.evaluation import views


def _starts(available, frames, stride, clips):
  return views.clip_starts(available, frames, stride, clips).numpy().tolist()


def test_evenly_spaced_from_first_to_last_possible_start():
  # 4 frames at stride 4 span 13 frames; a 40-frame video leaves starts 0..27.
  assert _starts(40, 4, 4, 4) == [0, 9, 18, 27]
  assert _starts(40, 4, 4, 2) == [0, 27]


@pytest.mark.parametrize("clips", [1, 4])
def test_eval_pipeline_takes_the_frames_of_the_temporal_views(clips):
  cfg = defaults.dataset_config(num_frames=4, stride=4, eval_clips=clips)
  for available in (13, 16, 40, 5):
    frames = tf.reshape(tf.range(available), [available, 1, 1, 1])
    ours = views.temporal_views(frames, 4, 4, clips)[..., 0, 0, 0]
    np.testing.assert_array_equal(ours, pipeline.eval_frame_indices(available, cfg))


def test_one_clip_is_the_centre_clip():
  assert _starts(16, 4, 4, 1) == [1] and _starts(5, 4, 4, 1) == [0]


@pytest.mark.parametrize("available", [4, 8, 13, 14])
def test_short_videos_still_get_distinct_clips(available):
  starts = _starts(available, 4, 4, 4)
  assert len(set(starts)) == 4 and all(0 <= s < available for s in starts)


def test_more_clips_than_frames_use_every_frame_as_a_start():
  assert sorted(set(_starts(3, 4, 4, 4))) == [0, 1, 2]


def test_temporal_views_loop_and_keep_stride():
  frames = tf.reshape(tf.range(8), [8, 1, 1, 1])
  clips = views.temporal_views(frames, 3, 2, 2)[:, :, 0, 0, 0].numpy()
  np.testing.assert_array_equal(clips, [[0, 2, 4], [3, 5, 7]])
  short = views.temporal_views(frames[:3], 3, 2, 3)[:, :, 0, 0, 0].numpy()
  np.testing.assert_array_equal(short, [[0, 2, 1], [1, 0, 2], [2, 1, 0]])


@pytest.mark.parametrize("height, width, expected", [
    (32, 48, [(0, 0), (0, 8), (0, 16)]),    # landscape: left, centre, right
    (48, 32, [(0, 0), (8, 0), (16, 0)]),    # portrait: top, centre, bottom
    (40, 40, [(4, 0), (4, 4), (4, 8)]),     # square: along the width
])
def test_three_crops_run_along_the_longer_axis(height, width, expected):
  offsets = views.spatial_crop_offsets(height, width, 32, 3).numpy()
  assert [tuple(o) for o in offsets] == expected


def test_multi_view_layout_is_clip_major():
  t, h, w = 16, 32, 48
  # Pixel value = frame index * 1000 + column: identifies clip and crop.
  frames = (np.arange(t)[:, None, None] * 1000 + np.arange(w)[None, None, :]
            + np.zeros((t, h, w)))[..., None].astype(np.int32)
  out = views.multi_view(tf.constant(frames), num_frames=4, stride=2, num_clips=2,
                         num_crops=3, size=32).numpy()
  assert out.shape == (6, 4, 32, 32, 1)
  first_frame = out[:, 0, 0, 0, 0] // 1000
  left_column = out[:, 0, 0, 0, 0] % 1000
  np.testing.assert_array_equal(first_frame, [0, 0, 0, 9, 9, 9])
  np.testing.assert_array_equal(left_column, [0, 8, 16, 0, 8, 16])


def test_multi_view_runs_inside_tf_data():
  ds = tf.data.Dataset.from_tensors(tf.zeros([10, 36, 36, 3], tf.uint8)).map(
      lambda f: views.multi_view(f, num_frames=4, stride=2, num_clips=3, num_crops=3, size=32))
  assert next(iter(ds)).shape == (9, 4, 32, 32, 3)


def test_only_one_or_three_crops():
  with pytest.raises(ValueError, match="1 or 3"):
    views.spatial_crop_offsets(32, 32, 32, 2)
