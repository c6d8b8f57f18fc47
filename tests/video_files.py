"""Writing small real video files with PyAV, for tests that need something to decode.

Each frame is a flat colour whose red channel encodes the frame number, so a
test can tell from decoded pixels which source frame it got.
"""

from __future__ import annotations

import fractions

import av
import numpy as np

# codec per container, as the datasets ship them: Kinetics mp4/H.264, SSv2 webm/VP9.
CODECS = {"mp4": "libx264", "webm": "libvpx-vp9", "avi": "mpeg4"}


def frame_pixels(index: int, height: int, width: int) -> np.ndarray:
  """The frame `index` of a test video: red = 10 * index (mod 250), green/blue fixed."""
  frame = np.empty((height, width, 3), np.uint8)
  frame[..., 0] = (10 * index) % 250
  frame[..., 1] = 128
  frame[..., 2] = 64
  return frame


def write_video(path: str, *, num_frames: int, fps: int = 10, height: int = 32,
                width: int = 48) -> str:
  """Writes a `num_frames`-frame video at `fps` to `path` (container from the suffix)."""
  suffix = str(path).rsplit(".", 1)[-1]
  with av.open(str(path), mode="w") as container:
    stream = container.add_stream(CODECS[suffix], rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = fractions.Fraction(1, fps)
    for i in range(num_frames):
      frame = av.VideoFrame.from_ndarray(frame_pixels(i, height, width), format="rgb24")
      frame.pts = i
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return str(path)


def source_index(frame_hwc: np.ndarray) -> int:
  """Which test frame a decoded frame shows (from its mean red channel)."""
  return int(round(float(frame_hwc[..., 0].mean()) / 10.0))
