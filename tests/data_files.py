"""Tiny datasets in every format the readers take, written by the tests themselves.

Each example's pixels encode its label (every pixel's red channel is 40 x
label, green 10 x frame index), so a test can check from a batch that frames
and labels stayed together.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import tensorflow as tf

from cover_jax.prepare import class_list, dmvr_format

CORRUPT_JPEG = b"\xff\xd8\xff\xe0" + b"\x00garbage" * 16


def frames(label: int, num_frames: int, height: int = 20, width: int = 28) -> np.ndarray:
  out = np.zeros((num_frames, height, width, 3), np.uint8)
  out[..., 0] = (40 * label) % 256
  out[..., 1] = (10 * np.arange(num_frames) % 250)[:, None, None]
  out[..., 2] = 90
  return out


def label_of(video_thwc: np.ndarray) -> int:
  """The label a uint8 clip's pixels encode."""
  return int(round(float(np.mean(video_thwc[..., 0])) / 40.0))


def dmvr_record(label: int, num_frames: int = 6, *, text: str | None = None,
                jpegs: list[bytes] | None = None, name: str = "v.mp4") -> bytes:
  jpegs = dmvr_format.encode_jpeg_frames(frames(label, num_frames)) if jpegs is None else jpegs
  return dmvr_format.encode_clip(jpegs, label_index=label,
                                 label_text=f"class{label}" if text is None else text,
                                 filename=name, start_us=0, end_us=1)


def write_records(path: pathlib.Path, records: list[bytes]) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  return str(path)


def write_dmvr(root: pathlib.Path, split: str, labels: list[int], *, num_classes: int,
               shards: int = 2, extra: list[bytes] = ()) -> pathlib.Path:
  """`<root>/<split>-0000i-of-0000n.tfrecord` records of `labels`, `extra` appended, classes.txt."""
  records = [dmvr_record(label, name=f"{split}_{i}.mp4") for i, label in enumerate(labels)]
  records += list(extra)
  for shard in range(shards):
    write_records(root / f"{split}-{shard:05d}-of-{shards:05d}.tfrecord", records[shard::shards])
  if not (root / class_list.CLASSES_FILE).exists():
    class_list.write_classes_txt(str(root), [f"class{i}" for i in range(num_classes)])
  return root


def write_image_folder(root: pathlib.Path, split: str, per_class: dict[str, int]) -> pathlib.Path:
  """`<root>/<split>/<class>/<i>.jpg`; class k of the sorted names has label k."""
  for label, name in enumerate(sorted(per_class)):
    folder = root / split / name
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(per_class[name]):
      jpeg = tf.io.encode_jpeg(frames(label, 1)[0], quality=95).numpy()
      (folder / f"{i}.jpg").write_bytes(jpeg)
  return root


def image_example(label: int, offset: int = 0) -> bytes:
  jpeg = tf.io.encode_jpeg(frames(label, 1)[0], quality=95).numpy()
  feature = {
      "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
      "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label - offset]))}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def break_symlink(path: pathlib.Path) -> None:
  """A listed file that cannot be read: a symlink to nowhere."""
  os.symlink(str(path) + ".gone", path)
