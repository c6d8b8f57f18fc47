"""DMVR-format clip records: write, parse, decode."""

import numpy as np
import pytest
import tensorflow as tf

from cover_jax.prepare import dmvr_format, synthetic


def _frames(label=0, frames=4, size=24):
  rng = synthetic.example_rng("synthetic_motion", "train", label)
  return synthetic.render_motion_video(rng, label, frames, size)


def _write(path, records):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for record in records:
      writer.write(record)
  return str(path)


def test_round_trip_keeps_frames_label_and_context(tmp_path):
  video = _frames(label=3)
  jpegs = dmvr_format.encode_jpeg_frames(video, quality=95)
  record = dmvr_format.encode_clip(jpegs, label_index=3, label_text="move down",
                                   filename="videos/a.mp4", start_us=1_000_000, end_us=3_500_000)
  clip = next(iter(dmvr_format.read_clips([_write(tmp_path / "r.tfrecord", [record])])))
  assert clip["frames"].shape == video.shape and clip["frames"].dtype == tf.uint8
  expected = np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in jpegs])
  np.testing.assert_array_equal(clip["frames"].numpy(), expected)
  # JPEG is lossy (and these frames carry per-pixel noise): close, not equal.
  assert np.abs(expected.astype(int) - video.astype(int)).mean() < 8
  assert int(clip["label"]) == 3 and clip["label_text"].numpy() == b"move down"
  assert clip["filename"].numpy() == b"videos/a.mp4"
  assert (int(clip["start_us"]), int(clip["end_us"])) == (1_000_000, 3_500_000)


def test_keys_are_dmvrs():
  record = dmvr_format.encode_clip([b"x", b"y"], label_index=1, label_text="c", filename="f",
                                   start_us=0, end_us=1)
  example = tf.train.SequenceExample.FromString(record)
  assert set(example.context.feature) == {"clip/label/index", "clip/label/text",
                                          "video/filename", "clip/start/timestamp",
                                          "clip/end/timestamp"}
  assert set(example.feature_lists.feature_list) == {"image/encoded"}
  assert [f.bytes_list.value[0] for f in
          example.feature_lists.feature_list["image/encoded"].feature] == [b"x", b"y"]


def test_missing_context_parses_to_defaults_and_missing_frames_to_empty():
  bare = tf.train.SequenceExample().SerializeToString()
  clip = dmvr_format.parse_clip(tf.constant(bare))
  assert int(clip["label"]) == dmvr_format.MISSING_LABEL
  assert int(clip["start_us"]) == dmvr_format.MISSING_TIMESTAMP
  assert clip["jpeg_frames"].shape == (0,)


def test_frame_order_is_kept(tmp_path):
  video = np.stack([np.full((8, 8, 3), 40 * t, np.uint8) for t in range(5)])
  record = dmvr_format.encode_clip(dmvr_format.encode_jpeg_frames(video), label_index=0,
                                   label_text="a", filename="f", start_us=0, end_us=1)
  clip = next(iter(dmvr_format.read_clips([_write(tmp_path / "r.tfrecord", [record])])))
  means = clip["frames"].numpy().reshape(5, -1).mean(axis=1)
  np.testing.assert_allclose(means, [0, 40, 80, 120, 160], atol=2)


def test_encode_rejects_non_uint8_or_wrong_shape():
  with pytest.raises(ValueError, match="uint8"):
    dmvr_format.encode_jpeg_frames(np.zeros((2, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
    dmvr_format.encode_jpeg_frames(np.zeros((8, 8, 3), np.uint8))
