"""Decoding real video files (written here with PyAV): resampling, resizing, trimming, errors."""

import numpy as np
import pytest

from cover_jax.prepare import video_decode
from cover_jax.prepare.video_decode import VideoDecodeError, decode_video
from tests import video_files


@pytest.mark.parametrize("suffix", ["mp4", "webm", "avi"])
def test_decodes_every_frame_in_order(tmp_path, suffix):
  path = video_files.write_video(tmp_path / f"v.{suffix}", num_frames=12, fps=10)
  video = decode_video(path)
  assert video.frames_thwc.shape == (12, 32, 48, 3) and video.frames_thwc.dtype == np.uint8
  assert [video_files.source_index(f) for f in video.frames_thwc] == list(range(12))
  np.testing.assert_allclose(video.timestamps_s, np.arange(12) / 10, atol=1e-6)
  assert video.source_fps == pytest.approx(10)


def test_resamples_to_a_lower_and_a_higher_rate(tmp_path):
  path = video_files.write_video(tmp_path / "v.mp4", num_frames=20, fps=10)  # 2 s
  slow = decode_video(path, fps=5)
  assert [video_files.source_index(f) for f in slow.frames_thwc] == list(range(0, 20, 2))
  fast = decode_video(path, fps=20)  # each source frame held for two output frames
  assert [video_files.source_index(f) for f in fast.frames_thwc] == [i // 2 for i in range(40)]
  np.testing.assert_allclose(fast.timestamps_s, np.arange(40) / 20, atol=1e-9)


def test_resizes_the_short_side_keeping_the_aspect_ratio(tmp_path):
  wide = video_files.write_video(tmp_path / "wide.mp4", num_frames=3, height=32, width=48)
  tall = video_files.write_video(tmp_path / "tall.mp4", num_frames=3, height=48, width=32)
  assert decode_video(wide, short_side=16).frames_thwc.shape == (3, 16, 24, 3)
  assert decode_video(tall, short_side=64).frames_thwc.shape == (3, 96, 64, 3)
  assert video_decode.resized_shape(240, 320, 256) == (256, 341)


def test_trims_to_a_time_window(tmp_path):
  path = video_files.write_video(tmp_path / "v.mp4", num_frames=30, fps=10)  # 3 s
  video = decode_video(path, start_s=1.0, end_s=2.0)
  assert [video_files.source_index(f) for f in video.frames_thwc] == list(range(10, 20))
  resampled = decode_video(path, start_s=1.0, end_s=2.0, fps=5)
  assert [video_files.source_index(f) for f in resampled.frames_thwc] == [10, 12, 14, 16, 18]


@pytest.mark.parametrize("make, reason", [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b"\x00garbage, not a video" * 50), "cannot decode"),
    (lambda p: p.write_bytes(b""), "cannot decode"),
])
def test_bad_files_raise_a_decode_error_naming_the_file(tmp_path, make, reason):
  path = tmp_path / "bad.mp4"
  make(path)
  with pytest.raises(VideoDecodeError, match=reason) as e:
    decode_video(str(path))
  assert str(path) in str(e.value)


def test_a_window_past_the_end_has_no_frames(tmp_path):
  path = video_files.write_video(tmp_path / "v.mp4", num_frames=10, fps=10)
  with pytest.raises(VideoDecodeError, match="no video frames"):
    decode_video(path, start_s=5.0, end_s=6.0)
