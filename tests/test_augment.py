"""Training augmentation (input/augment.py): every op eagerly and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf

from cover_jax.config import allowed, defaults, validation
from cover_jax.input import augment
from tests.helpers import load_config

OPS = sorted(augment.RANDAUGMENT_OPS)
STATISTIC_OPS = ("autocontrast", "equalize")  # no magnitude: never the identity
# Ops whose result for a frame depends on that frame alone (not on clip statistics).
PER_FRAME_OPS = ("identity", "rotate", "solarize", "color", "posterize", "brightness",
                 "sharpness", "shear_x", "shear_y", "translate_x", "translate_y")


def _clip(frames=3, height=32, width=40, seed=0, low=0, high=200):
  rng = np.random.default_rng(seed)
  return tf.constant(rng.integers(low, high, (frames, height, width, 3)), tf.uint8)


def _seed(a, b=0):
  return tf.constant([a, b], tf.int64)


def _aug_cfg(kind="crop", **overrides):
  return defaults.augment_config(kind=kind, short_side_range=(32, 48), **overrides)


def _train(clip, cfg, seed=0, crop_size=16, flip=True):
  return augment.train_augment(clip, cfg, crop_size=crop_size, flip=flip, crop_seed=_seed(seed, 1),
                               flip_seed=_seed(seed, 2)).numpy()


def _in_tf_data(fn, clip):
  """fn(clip) mapped over a one-element dataset (graph mode, as the pipeline runs it)."""
  return next(iter(tf.data.Dataset.from_tensors(clip).map(fn))).numpy()


@pytest.mark.parametrize("name", OPS)
def test_op_eager_and_in_tf_data(name):
  op, clip = augment.RANDAUGMENT_OPS[name], _clip()
  eager = op(clip, tf.constant(0.6)).numpy()
  assert eager.dtype == np.uint8 and eager.shape == tuple(clip.shape)
  np.testing.assert_array_equal(_in_tf_data(lambda c: op(c, tf.constant(0.6)), clip), eager)
  if name != "identity":
    assert not np.array_equal(eager, clip.numpy()), f"{name} left the clip unchanged"


@pytest.mark.parametrize("name", [n for n in OPS if n not in STATISTIC_OPS])
def test_op_is_identity_at_magnitude_zero(name):
  clip = _clip()
  np.testing.assert_array_equal(augment.RANDAUGMENT_OPS[name](clip, tf.constant(0.0)).numpy(),
                                clip.numpy())


@pytest.mark.parametrize("name", OPS)
def test_op_keeps_identical_frames_identical(name):
  clip = tf.concat([_clip(frames=1)] * 3, axis=0)
  out = augment.RANDAUGMENT_OPS[name](clip, tf.constant(-0.8)).numpy()
  for t in (1, 2):
    np.testing.assert_array_equal(out[t], out[0])


@pytest.mark.parametrize("name", PER_FRAME_OPS)
def test_op_transforms_every_frame_the_same_way(name):
  # Different frames: each comes out as the op on that frame alone would give.
  op, clip = augment.RANDAUGMENT_OPS[name], _clip(frames=3)
  out = op(clip, tf.constant(0.7)).numpy()
  for t in range(3):
    np.testing.assert_array_equal(out[t], op(clip[t:t + 1], tf.constant(0.7)).numpy()[0])


def test_statistic_ops_use_the_whole_clip():
  # A dark frame and a bright frame: autocontrast stretches by the clip's range,
  # so the dark frame stays darker than the bright one.
  dark, bright = _clip(frames=1, high=100), _clip(frames=1, seed=1, low=100, high=200)
  out = augment.autocontrast(tf.concat([dark, bright], 0), None).numpy()
  assert out[0].max() < out[1].min() + 1
  assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("kind", allowed.AUGMENT_KINDS)
def test_train_augment_shapes_dtype_and_tf_data(kind):
  cfg, clip = _aug_cfg(kind, randaugment_layers=2), _clip()
  eager = _train(clip, cfg)
  assert eager.dtype == np.uint8 and eager.shape == (3, 16, 16, 3)
  graph = _in_tf_data(lambda c: augment.train_augment(
      c, cfg, crop_size=16, flip=True, crop_seed=_seed(0, 1), flip_seed=_seed(0, 2)), clip)
  np.testing.assert_array_equal(graph, eager)


@pytest.mark.parametrize("kind", allowed.AUGMENT_KINDS)
def test_train_augment_is_deterministic_per_seed(kind):
  cfg, clip = _aug_cfg(kind, randaugment_layers=1), _clip()
  np.testing.assert_array_equal(_train(clip, cfg, seed=3), _train(clip, cfg, seed=3))
  outputs = {_train(clip, cfg, seed=s).tobytes() for s in range(6)}
  assert len(outputs) >= 5


@pytest.mark.parametrize("kind", allowed.AUGMENT_KINDS)
def test_crop_is_the_same_window_for_every_frame(kind):
  # Without RandAugment, frame t of the clip's result is the result for frame t alone.
  cfg, clip = _aug_cfg(kind), _clip(frames=3)
  for seed in range(4):
    out = _train(clip, cfg, seed)
    for t in range(3):
      np.testing.assert_array_equal(out[t], _train(clip[t:t + 1], cfg, seed)[0])


@pytest.mark.parametrize("kind", allowed.AUGMENT_KINDS)
def test_frames_that_differ_by_a_constant_still_do(kind):
  base = _clip(frames=1, low=20, high=200)
  clip = tf.concat([base, base + 30], 0)
  for seed in range(4):
    out = _train(clip, _aug_cfg(kind), seed).astype(int)
    difference = out[1] - out[0]
    assert np.abs(difference - 30).max() <= 1  # resizing rounds each frame once


def test_kind_crop_without_randaugment_is_a_plain_crop_and_flip():
  clip = _clip(frames=2)
  for seed in range(6):
    want = augment.random_flip(augment.random_crop(clip, 16, _seed(seed, 1)), _seed(seed, 2))
    np.testing.assert_array_equal(_train(clip, _aug_cfg("crop"), seed), want.numpy())


def test_flip_policy_is_respected():
  clip = _clip(height=16, width=16)
  cfg = _aug_cfg("crop")
  never = {_train(clip, cfg, s, flip=False).tobytes() for s in range(12)}
  assert never == {clip.numpy().tobytes()}
  sometimes = {_train(clip, cfg, s, flip=True).tobytes() for s in range(12)}
  assert sometimes == {clip.numpy().tobytes(), clip.numpy()[:, :, ::-1].tobytes()}


def test_scale_jitter_at_stored_size_is_a_crop_of_the_frames():
  clip = _clip(frames=1, height=32, width=40)
  cfg = defaults.augment_config(kind="scale_jitter", short_side_range=(32, 32))
  out = _train(clip, cfg, seed=1, crop_size=16, flip=False)[0]
  frame = clip.numpy()[0]
  windows = [frame[y:y + 16, x:x + 16] for y in range(17) for x in range(25)]
  assert any(np.array_equal(out, w) for w in windows)
  bigger = defaults.augment_config(kind="scale_jitter", short_side_range=(48, 64))
  assert not any(np.array_equal(_train(clip, bigger, 1, 16, False)[0], w) for w in windows)


@pytest.mark.parametrize("kind", ["random_resized_crop", "inception"])
def test_full_area_box_is_the_whole_frame_resized(kind):
  clip = _clip(frames=2, height=32, width=32)
  cfg = defaults.augment_config(kind=kind, area_range=(1.0, 1.0),
                                       aspect_ratio_range=(1.0, 1.0))
  want = augment.resize(clip, 16, 16).numpy()
  np.testing.assert_array_equal(_train(clip, cfg, seed=2, flip=False), want)


@pytest.mark.parametrize("kind", ["random_resized_crop", "inception"])
def test_small_area_boxes_zoom_in(kind):
  # A left half black, right half white frame: small boxes often land on one half.
  frame = np.zeros((1, 32, 32, 3), np.uint8)
  frame[:, :, 16:] = 255
  cfg = defaults.augment_config(kind=kind, area_range=(0.05, 0.1))
  uniform = sum(len(np.unique(_train(tf.constant(frame), cfg, s, flip=False))) == 1
                for s in range(10))
  assert uniform >= 3


def test_randaugment_same_ops_for_every_frame_and_seeded():
  clip = tf.concat([_clip(frames=1)] * 4, axis=0)
  changed = 0
  for seed in range(8):
    out = augment.randaugment(clip, 2, 9, _seed(seed)).numpy()
    np.testing.assert_array_equal(out, augment.randaugment(clip, 2, 9, _seed(seed)).numpy())
    for t in range(1, 4):
      np.testing.assert_array_equal(out[t], out[0])
    changed += not np.array_equal(out, clip.numpy())
  assert changed >= 6  # only identity twice leaves a clip as it was


def test_randaugment_draws_many_different_ops():
  # One op at full strength per seed: many different ops must show up.
  clip = _clip(frames=1)
  results = {augment.randaugment(clip, 1, 10, _seed(s)).numpy().tobytes() for s in range(60)}
  # 14 ops, 10 of them signed (two results each), 60 draws: most results show up.
  assert len(results) >= 12


def test_augment_config_of_old_configs_is_the_default():
  cfg = load_config(arg="tiny=true").datasets.motion
  assert defaults.augment_of(cfg).kind == "crop"
  with cfg.unlocked():
    del cfg["augment"]
  assert defaults.augment_of(cfg).to_dict() == defaults.augment_config().to_dict()


@pytest.mark.parametrize("field,value,fragment", [
    ("kind", "mosaic", "allowed: crop"),
    ("short_side_range", (8, 40), "crop_size"),
    ("area_range", (0.5, 0.2), "0 < min <= max <= 1"),
    ("aspect_ratio_range", (0.0, 2.0), "0 < min <= max"),
    ("randaugment_layers", -1, ">= 0"),
    ("randaugment_magnitude", 12, "[0, 10]"),
    ("mixup_alpha", -0.1, ">= 0"),
    ("switch_prob", 1.5, "[0, 1]"),
])
def test_bad_augment_fields_are_named(field, value, fragment):
  config = load_config(arg="tiny=true,datasets=motion")
  config.datasets.motion.augment.kind = "scale_jitter"
  config.datasets.motion.augment.short_side_range = (16, 20)
  config.datasets.motion.augment[field] = value
  with pytest.raises(validation.ConfigError) as e:
    validation.validate_config(config, num_devices=1)
  message = str(e.value)
  assert f"config.datasets.motion.augment.{field} = {value!r}" in message
  assert fragment in message and "Fix: --config.datasets.motion.augment." in message
