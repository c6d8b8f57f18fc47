"""Decoding video files into frames with PyAV (FFmpeg), for preparation and prediction.

`decode_video(path, fps=..., short_side=..., start_s=..., end_s=...)` returns
uint8 RGB frames (T, H, W, 3) and their timestamps. Frames are

- trimmed to [start_s, end_s) when given (Kinetics' clips are 10 s windows of
  longer YouTube videos);
- resampled to a constant `fps` by sample-and-hold (the output frame at time
  t is the newest source frame shown at t, as FFmpeg's `fps` filter does), so
  a clip's temporal stride means the same thing in every dataset;
- resized with FFmpeg's swscale (area averaging when shrinking, bilinear when
  enlarging) so the shorter side is `short_side` pixels, keeping the aspect
  ratio.

Every failure (missing file, not a video, corrupt stream, no frames in the
requested window) raises `VideoDecodeError` with the path and the reason, so a
batch job can skip and report the file instead of crashing.
"""

from __future__ import annotations

import dataclasses
import math
import os

import av
import numpy as np


class VideoDecodeError(RuntimeError):
  """A video that cannot be decoded; the message names the file and why."""


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
  frames_thwc: np.ndarray      # uint8 (T, H, W, 3), RGB
  timestamps_s: np.ndarray     # float64 (T,), seconds from the start of the file
  source_fps: float            # the stream's average frame rate (0 if unknown)


def resized_shape(height: int, width: int, short_side: int | None) -> tuple[int, int]:
  """(height, width) with the shorter side scaled to `short_side` (None: unchanged)."""
  if not short_side or min(height, width) == short_side:
    return height, width
  scale = short_side / min(height, width)
  if height <= width:
    return short_side, max(1, round(width * scale))
  return max(1, round(height * scale)), short_side


def _frame_times(frame, stream, index: int, fallback_fps: float) -> float:
  if frame.pts is not None and stream.time_base is not None:
    return float(frame.pts * stream.time_base)
  return index / fallback_fps  # streams without timestamps (rare): assume constant rate


def _to_rgb(frame, short_side: int | None) -> np.ndarray:
  height, width = resized_shape(frame.height, frame.width, short_side)
  if (height, width) != (frame.height, frame.width):
    frame = frame.reformat(width=width, height=height, format="rgb24",
                           interpolation="AREA" if height < frame.height else "BILINEAR")
  return frame.to_ndarray(format="rgb24")


def _resample(frames, times, fps: float, start_s: float, end_s: float):
  """Sample-and-hold to a constant rate: output k shows the newest frame at start + k/fps."""
  times = np.asarray(times)
  count = max(1, int(math.floor((end_s - start_s) * fps + 1e-9)))
  wanted = start_s + np.arange(count) / fps
  index = np.searchsorted(times, wanted + 1e-9, side="right") - 1
  index = np.clip(index, 0, len(frames) - 1)
  return [frames[i] for i in index], wanted


def decode_video(path: str, *, fps: float | None = None, short_side: int | None = None,
                 start_s: float | None = None, end_s: float | None = None) -> DecodedVideo:
  """Decodes `path` into RGB frames; see the module docstring.

  Args:
    path: a video file FFmpeg can read (mp4, webm, avi, ...).
    fps: output frame rate; None keeps the source frames as they are.
    short_side: resize so the shorter side has this many pixels; None keeps the size.
    start_s, end_s: keep only frames shown in [start_s, end_s) seconds.

  Raises:
    VideoDecodeError: the file is missing, unreadable, or has no frames in the window.
  """
  if not os.path.isfile(path):
    raise VideoDecodeError(f"{path}: no such file")
  start = 0.0 if start_s is None else float(start_s)
  end = math.inf if end_s is None else float(end_s)
  if end <= start:
    raise VideoDecodeError(f"{path}: empty time window [{start}, {end}) s")
  try:
    frames, times, source_fps = _decode_window(path, start, end, short_side)
  except av.FFmpegError as e:
    raise VideoDecodeError(f"{path}: cannot decode ({type(e).__name__}: {e})") from e
  if not frames:
    raise VideoDecodeError(f"{path}: no video frames in [{start}, {end}) s")
  if fps:
    last = times[-1] + 1.0 / (source_fps or fps)
    first = times[0] if start_s is None else start
    frames, times = _resample(frames, times, fps, first, min(end, last))
  return DecodedVideo(np.stack(frames), np.asarray(times, np.float64), source_fps)


def _decode_window(path: str, start: float, end: float, short_side: int | None):
  with av.open(path) as container:
    if not container.streams.video:
      raise VideoDecodeError(f"{path}: the file has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # FFmpeg's own frame/slice threads
    source_fps = float(stream.average_rate or 0.0)
    if start > 0 and stream.time_base is not None:
      # Seek lands on the keyframe before `start`; earlier frames are dropped below.
      container.seek(int(start / stream.time_base), stream=stream, backward=True)
    frames, times = [], []
    for i, frame in enumerate(container.decode(stream)):
      t = _frame_times(frame, stream, i, source_fps or 30.0)
      if t >= end:
        break
      if t < start:  # decoded from the keyframe before the window
        continue
      frames.append(_to_rgb(frame, short_side))
      times.append(t)
  return frames, times, source_fps
