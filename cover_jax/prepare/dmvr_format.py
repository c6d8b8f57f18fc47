"""DMVR's record format for video clips: one `tf.train.SequenceExample` per clip.

The layout (the same keys DMVR's own generator writes, so records from either
tool read the same way):

  feature_lists
    image/encoded            one JPEG per frame (bytes), in time order
  context
    clip/label/index         int64 class index into the dataset's class list
    clip/label/text          the class name (bytes, UTF-8)
    video/filename           the source video (bytes)
    clip/start/timestamp     clip start in the source video, microseconds
    clip/end/timestamp       clip end, microseconds

`encode_clip` writes one record (pure Python + TF encoding, used by the
preparation tools); `parse_clip` and `decode_frames` read them inside
`tf.data`. Missing context fields parse to defaults (label index -1, empty
strings, timestamps -1) so that a reader can tell unlabeled or foreign
records apart instead of failing on them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

FRAMES_KEY = "image/encoded"
LABEL_INDEX_KEY = "clip/label/index"
LABEL_TEXT_KEY = "clip/label/text"
FILENAME_KEY = "video/filename"
START_KEY = "clip/start/timestamp"
END_KEY = "clip/end/timestamp"

MISSING_LABEL = -1
MISSING_TIMESTAMP = -1


def encode_jpeg_frames(frames_thwc: np.ndarray, quality: int = 90) -> list[bytes]:
  """uint8 frames (T, H, W, 3) -> one JPEG per frame."""
  frames_thwc = np.asarray(frames_thwc)
  if frames_thwc.dtype != np.uint8 or frames_thwc.ndim != 4 or frames_thwc.shape[-1] != 3:
    raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames_thwc.dtype} "
                     f"{frames_thwc.shape}")
  return [tf.io.encode_jpeg(frame, quality=quality).numpy() for frame in frames_thwc]


def encode_clip(jpeg_frames: Sequence[bytes], *, label_index: int, label_text: str,
                filename: str, start_us: int, end_us: int) -> bytes:
  """One clip as a serialized DMVR-format SequenceExample."""
  example = tf.train.SequenceExample()
  context = example.context.feature
  context[LABEL_INDEX_KEY].int64_list.value.append(int(label_index))
  context[LABEL_TEXT_KEY].bytes_list.value.append(label_text.encode("utf-8"))
  context[FILENAME_KEY].bytes_list.value.append(filename.encode("utf-8"))
  context[START_KEY].int64_list.value.append(int(start_us))
  context[END_KEY].int64_list.value.append(int(end_us))
  frames = example.feature_lists.feature_list[FRAMES_KEY]
  for jpeg in jpeg_frames:
    frames.feature.add().bytes_list.value.append(jpeg)
  return example.SerializeToString()


_CONTEXT_SPEC = {
    LABEL_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_LABEL),
    LABEL_TEXT_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    FILENAME_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    START_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_TIMESTAMP),
    END_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=MISSING_TIMESTAMP),
}
_SEQUENCE_SPEC = {FRAMES_KEY: tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)}


def parse_clip(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
  """A serialized record -> {'jpeg_frames': string (T,), 'label': int64, ...}.

  Frames stay encoded: decoding is the expensive part and comes after any
  filtering (see `decode_frames`).
  """
  context, sequence = tf.io.parse_single_sequence_example(
      serialized, context_features=_CONTEXT_SPEC, sequence_features=_SEQUENCE_SPEC)
  return {"jpeg_frames": sequence[FRAMES_KEY], "label": context[LABEL_INDEX_KEY],
          "label_text": context[LABEL_TEXT_KEY], "filename": context[FILENAME_KEY],
          "start_us": context[START_KEY], "end_us": context[END_KEY]}


def decode_frames(jpeg_frames: tf.Tensor) -> tf.Tensor:
  """string (T,) JPEGs -> uint8 (T, H, W, 3); every frame must have the same size."""
  return tf.map_fn(lambda jpeg: tf.io.decode_jpeg(jpeg, channels=3), jpeg_frames,
                   fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def read_clips(files: Sequence[str], *, decode: bool = True) -> tf.data.Dataset:
  """Records in `files` (in order) as parsed clips, frames decoded if `decode`."""
  ds = tf.data.TFRecordDataset(list(files)).map(parse_clip)
  if decode:
    ds = ds.map(lambda clip: {**clip, "frames": decode_frames(clip["jpeg_frames"])})
  return ds
