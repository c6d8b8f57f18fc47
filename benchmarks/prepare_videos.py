r"""How fast the preparation tool turns videos into records, per stage and per worker count.

  python benchmarks/prepare_videos.py                      # 8 Kinetics-like videos
  python benchmarks/prepare_videos.py --num_videos=16 --worker_counts=1,2,4

Writes `--num_videos` H.264 videos like a Kinetics download (10 s, 30 fps,
640x360, textured moving content, so the decoder has real work), then times

- decode: `video_decode.decode_video` to 25 fps, short side 256 (one process);
- decode + JPEG: `video_records.encode_video`, what a worker does per video;
- the whole tool (`prepare_cli.prepare`) with each of `--worker_counts`, from start to
  the last shard renamed into place (worker start-up included).

and prints a table (videos/s, frames/s, MB stored per video). Stored size and
decode speed depend on the content: real footage differs from this texture.
"""

from __future__ import annotations

import fractions
import os
import shutil
import tempfile
import time

from absl import app, flags
import av
import numpy as np

from cover_jax.prepare import annotations, cli as prepare_cli, video_decode, video_records

_NUM_VIDEOS = flags.DEFINE_integer("num_videos", 8, "Videos to write and prepare.")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "Length of each video.")
_WORKER_COUNTS = flags.DEFINE_list("worker_counts", ["1", "2"],
                                   "Worker counts to time the tool with.")
_SOURCE = dict(fps=30, width=640, height=360)


def _write_video(path: str, seconds: float, seed: int) -> None:
  """A blotchy texture drifting across the frame, with fine grain, as H.264 mp4.

  Pure noise would make every codec (and JPEG) work far harder than on camera
  footage; 16-pixel blotches plus a little grain are closer to it.
  """
  rng = np.random.default_rng(seed)
  blotches = rng.integers(0, 256, (_SOURCE["height"] // 8, _SOURCE["width"] // 8, 3))
  grain = rng.integers(-2, 3, (_SOURCE["height"] * 2, _SOURCE["width"] * 2, 3))
  texture = np.clip(np.kron(blotches, np.ones((16, 16, 1), int)) + grain, 0, 255).astype(np.uint8)
  with av.open(path, mode="w") as container:
    stream = container.add_stream("libx264", rate=_SOURCE["fps"])
    stream.width, stream.height, stream.pix_fmt = _SOURCE["width"], _SOURCE["height"], "yuv420p"
    stream.time_base = fractions.Fraction(1, _SOURCE["fps"])
    for i in range(int(seconds * _SOURCE["fps"])):
      y, x = (3 * i) % _SOURCE["height"], (5 * i) % _SOURCE["width"]
      frame = texture[y:y + _SOURCE["height"], x:x + _SOURCE["width"]]
      video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
      video_frame.pts = i
      for packet in stream.encode(video_frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def _time_stage(fn, clips) -> tuple[float, int]:
  start, frames = time.perf_counter(), 0
  for clip in clips:
    frames += fn(clip)
  return time.perf_counter() - start, frames


def _row(name: str, seconds: float, videos: int, frames: int, mb: str = "") -> str:
  return (f"{name:<34} {seconds:>8.2f} {videos / seconds:>9.2f} {frames / seconds:>9.1f} "
          f"{mb:>9}")


def main(argv):
  del argv
  root = tempfile.mkdtemp(prefix="prepare_bench_")
  try:
    for i in range(_NUM_VIDEOS.value):
      os.makedirs(os.path.join(root, "raw", f"class{i % 4}"), exist_ok=True)
      _write_video(os.path.join(root, "raw", f"class{i % 4}", f"v{i}.mp4"), _SECONDS.value, i)
    clips = annotations.read_class_folders(os.path.join(root, "raw"))
    settings = video_records.EncodeSettings()
    decode = lambda clip: len(video_decode.decode_video(
        clip.path, fps=settings.fps, short_side=settings.short_side).frames_thwc)
    encode = lambda clip: len(video_records.encode_video(clip, settings).jpeg_frames)
    n = len(clips)
    print(f"{n} videos of {_SECONDS.value:g} s, {_SOURCE['width']}x{_SOURCE['height']} at "
          f"{_SOURCE['fps']} fps (H.264) -> {settings.fps:g} fps, short side "
          f"{settings.short_side}, JPEG {settings.jpeg_quality}; {os.cpu_count()} CPU cores")
    print(f"{'stage':<34} {'seconds':>8} {'videos/s':>9} {'frames/s':>9} {'MB/video':>9}")
    print(_row("decode (1 process)", *_with_videos(_time_stage(decode, clips), n)))
    print(_row("decode + JPEG (1 process)", *_with_videos(_time_stage(encode, clips), n)))
    for workers in map(int, _WORKER_COUNTS.value):
      out = os.path.join(root, f"out{workers}")
      start = time.perf_counter()
      entry = prepare_cli.prepare(prepare_cli.PrepareOptions(
          format="folder", video_root=os.path.join(root, "raw"), output_dir=out, split="train",
          settings=settings, num_shards=n, workers=workers, progress=False))
      seconds = time.perf_counter() - start
      stored = sum(os.path.getsize(os.path.join(out, f)) for f in entry["shards"]) / n / 1e6
      frames = n * int(_SECONDS.value * settings.fps)
      print(_row(f"prepare, {workers} worker(s)", seconds, n, frames, f"{stored:.2f}"))
  finally:
    shutil.rmtree(root)


def _with_videos(timed: tuple[float, int], n: int) -> tuple[float, int, int]:
  seconds, frames = timed
  return seconds, n, frames


if __name__ == "__main__":
  app.run(main)
