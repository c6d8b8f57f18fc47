"""One labelled video -> JPEG frames -> one DMVR-format record.

Shared by the preparation tool (`prepare.py`) and the TFDS builders
(`video_builders.py`), so both store exactly the same frames.

Defaults, and why:
- 25 fps: close to the native rate of Kinetics and Moments-in-Time (mostly
  25-30 fps), so the dense sampling of the reference models can be
  reproduced (TimeSformer's 8 frames 32 apart at 30 fps are 8 frames ~27
  apart here; ViViT's 32 frames at stride 2 need the full rate); one rate for
  every dataset makes a stride mean the same time span everywhere. DMVR's own
  generator keeps 10 fps: about 2.5x fewer bytes, but too coarse for those
  configs. Something-Something-v2 ships at 12 fps: prepare it with `fps=12`
  (its native rate) rather than duplicating frames.
- short side 256: the paper's pipelines resize to 256 and crop 224 (use 320
  for the 320-px evaluation setting); storing exactly that avoids decoding
  full-HD frames on every training step.
- JPEG quality 90: visually lossless for training, about half the bytes of 95.
"""

from __future__ import annotations

import dataclasses

from cover_jax.prepare import dmvr_format, video_decode
from cover_jax.prepare.annotations import VideoClip

DEFAULT_FPS = 25.0
DEFAULT_SHORT_SIDE = 256
DEFAULT_JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
  """How videos become frames.

  Attributes:
    fps: output frame rate (constant, by sample-and-hold); None keeps the
      source's frames as they are.
    short_side: resize so the shorter side has this many pixels; None keeps
      the source size.
    jpeg_quality: 1-100.
  """

  fps: float | None = DEFAULT_FPS
  short_side: int | None = DEFAULT_SHORT_SIDE
  jpeg_quality: int = DEFAULT_JPEG_QUALITY

  def __post_init__(self):
    if self.fps is not None and not self.fps > 0:
      raise ValueError(f"fps must be positive (or None to keep the source rate), got {self.fps}")
    if self.short_side is not None and (int(self.short_side) != self.short_side
                                        or self.short_side < 1):
      raise ValueError(f"short_side must be a positive integer (or None to keep the size), "
                       f"got {self.short_side}")
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclasses.dataclass(frozen=True)
class EncodedVideo:
  """A decoded, resampled, resized video as JPEG frames.

  Attributes:
    jpeg_frames: one JPEG per frame, in time order.
    start_us: time of the first frame in the source file, microseconds.
    end_us: end of the last frame (its time plus one frame), microseconds.
  """

  jpeg_frames: list[bytes]
  start_us: int
  end_us: int


def encode_video(clip: VideoClip, settings: EncodeSettings) -> EncodedVideo:
  """Decodes `clip` (its window, if it has one) into JPEG frames.

  Raises:
    video_decode.VideoDecodeError: the file is missing, unreadable or has no
      frames in the window.
  """
  video = video_decode.decode_video(clip.path, fps=settings.fps, short_side=settings.short_side,
                                    start_s=clip.start_s, end_s=clip.end_s)
  jpegs = dmvr_format.encode_jpeg_frames(video.frames_thwc, quality=settings.jpeg_quality)
  rate = settings.fps or video.source_fps
  frame_s = 1.0 / rate if rate else 0.0
  times_s = video.timestamps_s
  return EncodedVideo(jpegs, round(times_s[0] * 1e6), round((times_s[-1] + frame_s) * 1e6))


def skip_reason(error: Exception, clip: VideoClip) -> str:
  """Why a video was skipped, for reports (which name the file already)."""
  if isinstance(error, video_decode.VideoDecodeError):
    return str(error).removeprefix(f"{clip.path}: ")
  return f"{type(error).__name__}: {error}"


def clip_record(clip: VideoClip, label_index: int, settings: EncodeSettings) -> bytes:
  """One labelled video as a serialized DMVR-format SequenceExample."""
  video = encode_video(clip, settings)
  return dmvr_format.encode_clip(video.jpeg_frames, label_index=label_index,
                                 label_text=clip.label, filename=clip.name,
                                 start_us=video.start_us, end_us=video.end_us)
