"""tf.data pipelines: clip sampling, crops, flips, determinism, resume, eval padding."""

import numpy as np
import pytest
import tensorflow as tf

from cover_jax.evaluation import dataset as eval_data
from cover_jax.input import augment, pipeline


@pytest.fixture
def specs(tiny_config):
  return pipeline.prepare_datasets(tiny_config)


def _train_batches(spec, config, n, start_batch=0, **kw):
  start = start_batch * spec.config.batch_size // kw.get("num_shards", 1)
  ds = pipeline.train_dataset(spec, global_seed=config.seed, start_position=start, **kw)
  return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def _decoded(spec, split, index=0, count=1):
  """[(label, uint8 frames (F, H, W, 3))] of every example of one process's share."""
  out = []
  for raw in spec.source.read(split, index, count):
    example = spec.source.parse(raw)
    frames = pipeline.decode_frames(example["encoded"], spec.source.jpeg_only)
    out.append((int(example["label"]), frames.numpy()))
  return out


def test_train_batches_shapes(specs, tiny_config):
  for name, spec in specs.items():
    cfg = tiny_config.datasets[name]
    batch = _train_batches(spec, tiny_config, 1)[0]
    assert batch["video"].shape == (cfg.batch_size, cfg.num_frames, cfg.crop_size, cfg.crop_size, 3)
    # uint8: the trainer normalises on the devices (4x less to copy and transfer).
    assert batch["video"].dtype == np.uint8 and batch["label"].dtype == np.int32
    assert ((0 <= batch["label"]) & (batch["label"] < cfg.num_classes)).all()
  assert tiny_config.datasets.images.num_frames == 1  # images are T=1 videos


def test_train_stream_is_deterministic(specs, tiny_config):
  a = _train_batches(specs["motion"], tiny_config, 3)
  b = _train_batches(specs["motion"], tiny_config, 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["video"], y["video"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_train_stream_resumes_at_any_batch(specs, tiny_config):
  # Five batches span more than one epoch of the 16-video tiny set.
  full = _train_batches(specs["appearance"], tiny_config, 5)
  resumed = _train_batches(specs["appearance"], tiny_config, 2, start_batch=3)
  for x, y in zip(full[3:], resumed):
    np.testing.assert_array_equal(x["video"], y["video"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_processes_read_disjoint_shares(specs, tiny_config):
  spec = specs["motion"]
  labels = []
  for index in range(2):
    labels.append([(label, frames.tobytes()) for label, frames in _decoded(spec, "test", index, 2)])
  assert len(labels[0]) + len(labels[1]) == spec.num_test_examples
  assert not set(labels[0]) & set(labels[1])


def test_clip_indices_loop_short_videos():
  np.testing.assert_array_equal(pipeline.clip_indices(5, 4, 2, 0).numpy(), [0, 2, 4, 1])
  np.testing.assert_array_equal(pipeline.clip_indices(16, 4, 2, 3).numpy(), [3, 5, 7, 9])


def test_segment_sampling_takes_one_frame_per_segment():
  np.testing.assert_array_equal(pipeline.segment_indices(16, 4, 0.5).numpy(), [2, 6, 10, 14])
  np.testing.assert_array_equal(pipeline.segment_indices(3, 4, 0.5).numpy(), [0, 1, 1, 2])


def test_random_crop_and_flip_apply_to_whole_clip():
  frames = tf.random.stateless_uniform((4, 12, 12, 3), (1, 2), maxval=255, dtype=tf.int32)
  frames = tf.concat([frames[:1]] * 4, axis=0)  # identical frames
  for seed in range(6):
    clip = augment.random_flip(augment.random_crop(frames, 8, (seed, 0)), (seed, 1)).numpy()
    for t in range(1, 4):  # same window and same flip on every frame
      np.testing.assert_array_equal(clip[t], clip[0])


def test_random_flip_flips_horizontally_sometimes():
  clip = tf.reshape(tf.range(2 * 3 * 4 * 1), (2, 3, 4, 1))
  outs = {augment.random_flip(clip, (s, 0)).numpy().tobytes() for s in range(20)}
  assert outs == {clip.numpy().tobytes(), clip.numpy()[:, :, ::-1].tobytes()}


def _first_frames_seen(spec, config, name, flip):
  """For full-size crops: how many clips start unmirrored / mirrored vs the raw videos."""
  with config.unlocked():
    ds_cfg = config.datasets[name]
    ds_cfg.crop_size, ds_cfg.flip = ds_cfg.synthetic.size, flip
  spec = pipeline.DatasetSpec(name, ds_cfg, spec.source, spec.class_names)
  raw = {f.tobytes() for _, frames in _decoded(spec, "train") for f in frames}
  plain = mirrored = 0
  for batch in _train_batches(spec, config, 2):
    for video in batch["video"]:
      frame = video[0]
      plain += frame.tobytes() in raw
      mirrored += frame[:, ::-1].tobytes() in raw
  return plain, mirrored


def test_flip_policy(specs, tiny_config):
  # Motion is never flipped ("move left" would become "move right") ...
  plain, mirrored = _first_frames_seen(specs["motion"], tiny_config, "motion", flip=False)
  assert plain == 2 * tiny_config.datasets.motion.batch_size and mirrored == 0
  # ... while a flippable dataset does get mirrored clips.
  plain, mirrored = _first_frames_seen(specs["motion"], tiny_config, "motion", flip=True)
  assert plain > 0 and mirrored > 0


def test_eval_covers_every_test_video_once(specs, tiny_config):
  spec = specs["appearance"]
  ds, num_batches = eval_data.eval_dataset(spec)
  batches = list(ds.as_numpy_iterator())
  assert len(batches) == num_batches
  assert sum(int(b["mask"].sum()) for b in batches) == spec.num_test_examples
  # Two processes: equal batch counts, together every example once.
  counts = []
  for index in range(2):
    ds, n = eval_data.eval_dataset(spec, shard_index=index, num_shards=2)
    b = list(ds.as_numpy_iterator())
    counts.append((n, len(b), sum(int(x["mask"].sum()) for x in b)))
  assert counts[0][0] == counts[1][0] == counts[0][1] == counts[1][1]
  assert counts[0][2] + counts[1][2] == spec.num_test_examples


def test_eval_is_deterministic(specs, tiny_config):
  spec = specs["motion"]
  runs = [list(eval_data.eval_dataset(spec)[0].as_numpy_iterator()) for _ in range(2)]
  for x, y in zip(*runs):
    np.testing.assert_array_equal(x["video"], y["video"])
