r"""Input pipeline throughput: clips/s per CPU core, train and eval, beside the JPEG-decode ceiling.

Writes its own DMVR-format records (`--videos` videos of `--frames` JPEG frames
of 340x256, the usual 256-short-side preparation) to a temp dir, then times,
on `--cores` tf.data threads:

  decode ceiling   tf.io.decode_jpeg of 8 frames per clip, from JPEG bytes in
                   memory, nothing else: the most any pipeline can reach
  train stages     the training pipeline (pipeline.train_dataset: 8 frames at
                   224^2, random clip, crop, flip, batch of uint8 clips; the
                   trainer normalises on the devices) and the same cut short
                   after each stage, to show where the time goes
  eval             evaluation/dataset.py eval_dataset with K clips x S crops per video;
                   a clip here is one view (8 frames at 224^2)

  python benchmarks/input_pipeline.py               # about a minute on 2 cores
  python benchmarks/input_pipeline.py --seconds=2 --videos=8   # smoke run

Numbers on a shared machine move by 10-20% between runs: compare rows of the
same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cover_jax.config import defaults  # noqa: E402
from cover_jax.prepare import dmvr_format  # noqa: E402
from cover_jax.evaluation import dataset as eval_data  # noqa: E402
from cover_jax.input import pipeline, sources  # noqa: E402

HEIGHT, WIDTH, CLIP_FRAMES, CROP = 256, 340, 8, 224


def _frames(rng, num_frames: int) -> np.ndarray:
  """Smooth moving gradients plus noise: JPEGs of a realistic size (~20-30 kB)."""
  y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
  base = rng.uniform(0, 255, 3)
  out = np.empty((num_frames, HEIGHT, WIDTH, 3), np.uint8)
  for t in range(num_frames):
    for c in range(3):
      wave = 60 * np.sin((x + 7 * t) / (20 + 9 * c)) + 50 * np.cos((y - 5 * t) / (15 + 4 * c))
      out[t, ..., c] = np.clip(base[c] + wave + rng.normal(0, 12, wave.shape), 0, 255)
  return out


def write_records(directory: str, videos: int, frames: int) -> list[list[bytes]]:
  """`train-*` and `test-*` records of `videos` videos; returns each video's JPEGs."""
  rng = np.random.default_rng(0)
  jpegs = [dmvr_format.encode_jpeg_frames(_frames(rng, frames)) for _ in range(videos)]
  for split in ("train", "test"):
    with tf.io.TFRecordWriter(os.path.join(directory, f"{split}-00000-of-00001.tfrecord")) as w:
      for i, video in enumerate(jpegs):
        w.write(dmvr_format.encode_clip(video, label_index=i % 4, label_text=f"c{i % 4}",
                                        filename=f"{i}.mp4", start_us=0, end_us=1))
  return jpegs


def _threaded(ds: tf.data.Dataset, cores: int) -> tf.data.Dataset:
  options = tf.data.Options()
  options.threading.private_threadpool_size = cores
  return ds.with_options(options)


def clips_per_second(ds: tf.data.Dataset, clips_per_element: int, seconds: float) -> float:
  """Elements drawn for `seconds` after a warm-up, as clips/s."""
  iterator = iter(ds)
  for _ in range(3):
    next(iterator)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    next(iterator)
    count += 1
  return count * clips_per_element / (time.perf_counter() - start)


def decode_ceiling(jpegs: list[list[bytes]], cores: int) -> tf.data.Dataset:
  """8 frames per clip decoded from bytes in memory: nothing but tf.io.decode_jpeg."""
  rng = np.random.default_rng(1)
  clips = [video[s:s + CLIP_FRAMES] for video in jpegs
           for s in rng.integers(0, len(video) - CLIP_FRAMES + 1, 4)]
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(clips)).repeat()
  ds = ds.map(lambda c: pipeline.decode_frames(c, jpeg_only=True), num_parallel_calls=cores)
  return _threaded(ds.prefetch(2), cores)


def _spec(directory: str, **fields) -> pipeline.DatasetSpec:
  cfg = defaults.dataset_config(source="dmvr", path=directory, num_classes=4,
                                       num_frames=CLIP_FRAMES, stride=2, crop_size=CROP,
                                       shuffle_buffer=64, **fields)
  source = sources.open_source("bench", cfg, "")
  return pipeline.DatasetSpec("bench", cfg, source, source.class_names)


def train_stage(spec: pipeline.DatasetSpec, stage: str, cores: int) -> tf.data.Dataset:
  """The train pipeline up to `stage` (parse / decode / augment), unbatched, or in full."""
  if stage == "full":
    return _threaded(pipeline.train_dataset(spec, global_seed=0), cores)
  cfg = spec.config

  def fn(index, raw):
    encoded, label = pipeline.checked_example(spec, raw)
    seeds = tf.random.experimental.stateless_split(tf.stack([tf.constant(0, tf.int64), index]),
                                                   3)
    chosen = tf.gather(encoded, pipeline.train_frame_indices(tf.shape(encoded)[0], cfg, seeds[0]))
    if stage == "parse":
      return tf.strings.length(chosen)
    clip = pipeline.decode_frames(chosen, True)
    if stage == "decode":
      return clip
    clip = pipeline._augment_train_clip(clip, cfg, seeds[1:])  # pylint: disable=protected-access
    if stage == "augment":
      return clip
    # What normalising on the host (float32, as before) would add.
    return (tf.cast(clip, tf.float32) / 255.0 - 0.45) / 0.225

  ds = spec.source.read(cfg.train_split, 0, 1).repeat().shuffle(64, seed=0)
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), ds)
  return _threaded(ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE).prefetch(4), cores)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--videos", type=int, default=32)
  parser.add_argument("--frames", type=int, default=32, help="frames per stored video")
  parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per row")
  parser.add_argument("--cores", type=int, default=os.cpu_count())
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--eval_views", default="4x3", help="K clips x S crops")
  args = parser.parse_args()
  clips, crops = (int(x) for x in args.eval_views.split("x"))
  with tempfile.TemporaryDirectory() as directory:
    jpegs = write_records(directory, args.videos, args.frames)
    size = np.mean([len(j) for video in jpegs for j in video]) / 1024
    spec = _spec(directory, batch_size=args.batch, eval_batch_size=4, eval_clips=clips,
                 eval_crops=crops)
    rows = [("decode ceiling: tf.io.decode_jpeg x 8", clips_per_second(
        decode_ceiling(jpegs, args.cores), 1, args.seconds))]
    for stage, label in (("parse", "train: read + parse + pick 8 frames"),
                         ("decode", "train: ... + decode the 8 frames"),
                         ("augment", "train: ... + crop + flip (uint8)"),
                         ("host_float", "(not used) ... + normalise to float32 on host"),
                         ("full", "train pipeline (+ batch: what trains)")):
      per_element = args.batch if stage == "full" else 1
      rows.append((label, clips_per_second(train_stage(spec, stage, args.cores), per_element,
                                           args.seconds)))
    eval_ds, _ = eval_data.eval_dataset(spec)
    eval_ds = _threaded(eval_ds.repeat(), args.cores)
    rows.append((f"eval pipeline ({clips}x{crops} views; a clip = a view)",
                 clips_per_second(eval_ds, 4 * clips * crops, args.seconds)))
  ceiling = rows[0][1]
  print(f"\n{args.videos} videos x {args.frames} JPEG frames of {WIDTH}x{HEIGHT} "
        f"(mean {size:.1f} kB); clips of {CLIP_FRAMES} frames at {CROP}x{CROP}; "
        f"{args.cores} tf.data thread(s), {args.seconds:.0f} s per row\n")
  print(f"{'pipeline':<46} {'clips/s':>9} {'per core':>9} {'of ceiling':>10}")
  print("-" * 77)
  for label, rate in rows:
    print(f"{label:<46} {rate:>9.1f} {rate / args.cores:>9.1f} {rate / ceiling:>10.0%}")


if __name__ == "__main__":
  main()
