"""Training augmentation of clips on tf.data, the same for every frame of a clip.

A clip is (T, H, W, 3) uint8 (an image is T=1). Every random parameter (crop
window, scale, flip, RandAugment ops and signs) is drawn once per clip from a
stateless seed, so all frames get the identical transform and a pipeline is
deterministic for its seeds (exact resume, see pipeline.py). Ops whose effect
depends on pixel statistics (autocontrast, equalize, contrast) take them over
the whole clip, for the same reason.

`train_augment` is the one entry point; `config.datasets.<name>.augment`
(defaults.augment_config) chooses what it does:
  crop                 a random crop_size window (the default)
  scale_jitter         short side resized to a random size in short_side_range,
                       then a random crop (SlowFast / TimeSformer)
  random_resized_crop  a box of random area and aspect ratio, resized to
                       crop_size (torchvision / MViT)
  inception            tf.image's sampled distorted bounding box, resized to
                       crop_size (big_vision's inception_crop, for images)
then a horizontal flip with probability 1/2 where the dataset's `flip` allows
it, then RandAugment with `randaugment_layers` ops (0: off) at
`randaugment_magnitude` (0..10). The mixup / cutmix fields of the same config
act on device, in the train step (cover_jax/train/mixup.py).
"""

from __future__ import annotations

import math

import tensorflow as tf

from cover_jax.config import allowed

_FILL = 128.0  # grey for pixels that rotate / shear / translate bring in (as timm)
_RRC_ATTEMPTS = 10


def train_augment(clip, aug_cfg, *, crop_size: int, flip: bool, crop_seed,
                  flip_seed) -> tf.Tensor:
  """The training transform of one clip.

  Args:
    clip: (T, H, W, 3) uint8.
    aug_cfg: the dataset's `augment` ConfigDict.
    crop_size: output height and width.
    flip: whether the dataset may be mirrored (never for motion datasets).
    crop_seed, flip_seed: stateless seeds, shape (2,); RandAugment derives its
      own from `flip_seed`. kind='crop' without RandAugment is exactly the
      pipeline's former crop + flip for the same seeds.

  Returns:
    (T, crop_size, crop_size, 3) uint8.
  """
  clip = spatial_crop(clip, aug_cfg, crop_size, crop_seed)
  if flip:
    clip = random_flip(clip, flip_seed)
  if aug_cfg.randaugment_layers > 0:
    clip = randaugment(clip, aug_cfg.randaugment_layers, aug_cfg.randaugment_magnitude,
                       tf.random.experimental.stateless_fold_in(flip_seed, 1))
  return clip


def spatial_crop(clip, aug_cfg, crop_size: int, seed) -> tf.Tensor:
  """The crop of `aug_cfg.kind`, one window for the whole clip."""
  if aug_cfg.kind == "crop":
    return random_crop(clip, crop_size, seed)
  if aug_cfg.kind == "scale_jitter":
    return scale_jitter(clip, aug_cfg.short_side_range, crop_size, seed)
  if aug_cfg.kind == "random_resized_crop":
    return random_resized_crop(clip, crop_size, aug_cfg.area_range, aug_cfg.aspect_ratio_range,
                               seed)
  if aug_cfg.kind == "inception":
    return inception_crop(clip, crop_size, aug_cfg.area_range, aug_cfg.aspect_ratio_range, seed)
  raise ValueError(f"augment.kind {aug_cfg.kind!r}: use one of {', '.join(allowed.AUGMENT_KINDS)}")


# --- Geometry ---------------------------------------------------------------

def random_crop(clip, size: int, seed) -> tf.Tensor:
  """The same random size x size window for every frame of the clip."""
  shape = tf.shape(clip)
  return tf.image.stateless_random_crop(clip, [shape[0], size, size, shape[3]], seed)


def random_flip(clip, seed) -> tf.Tensor:
  """Flips the whole clip (never frame by frame) with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)


def resize(clip, height, width) -> tf.Tensor:
  """Bilinear resize of uint8 frames, rounded back to uint8."""
  out = tf.image.resize(clip, tf.stack([height, width]), method="bilinear")
  return tf.saturate_cast(tf.round(out), tf.uint8)


def scale_jitter(clip, short_side_range, crop_size: int, seed) -> tf.Tensor:
  """Short side resized to a random size in [min, max] (inclusive), then a random crop."""
  resize_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  short = tf.random.stateless_uniform([], resize_seed, short_side_range[0],
                                      short_side_range[1] + 1, dtype=tf.int32)
  shape = tf.shape(clip)
  scale = tf.cast(short, tf.float32) / tf.cast(tf.minimum(shape[1], shape[2]), tf.float32)
  height = tf.maximum(tf.cast(tf.round(tf.cast(shape[1], tf.float32) * scale), tf.int32), short)
  width = tf.maximum(tf.cast(tf.round(tf.cast(shape[2], tf.float32) * scale), tf.int32), short)
  return random_crop(resize(clip, height, width), crop_size, crop_seed)


def random_resized_crop(clip, crop_size: int, area_range, aspect_ratio_range, seed) -> tf.Tensor:
  """torchvision's RandomResizedCrop for a whole clip.

  Up to 10 candidate boxes (area fraction uniform in `area_range`, aspect
  ratio w/h log-uniform in `aspect_ratio_range`); the first that fits the
  frame is used, the whole frame if none does.
  """
  box_seed, offset_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.shape(clip)
  height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
  area_seed, ratio_seed = tf.unstack(tf.random.experimental.stateless_split(box_seed, 2))
  area = tf.random.stateless_uniform([_RRC_ATTEMPTS], area_seed, *area_range) * height * width
  log_ratio = tf.random.stateless_uniform([_RRC_ATTEMPTS], ratio_seed,
                                          math.log(aspect_ratio_range[0]),
                                          math.log(aspect_ratio_range[1]))
  box_w = tf.round(tf.sqrt(area * tf.exp(log_ratio)))
  box_h = tf.round(tf.sqrt(area / tf.exp(log_ratio)))
  fits = (box_w >= 1) & (box_h >= 1) & (box_w <= width) & (box_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  any_fits = tf.reduce_any(fits)
  box_h = tf.cast(tf.where(any_fits, box_h[first], height), tf.int32)
  box_w = tf.cast(tf.where(any_fits, box_w[first], width), tf.int32)
  crop = tf.image.stateless_random_crop(clip, tf.stack([shape[0], box_h, box_w, shape[3]]),
                                        offset_seed)
  return resize(crop, crop_size, crop_size)


def inception_crop(clip, crop_size: int, area_range, aspect_ratio_range, seed) -> tf.Tensor:
  """big_vision's inception_crop for a whole clip: a sampled distorted box, resized."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(clip)[1:], bounding_boxes=tf.zeros([1, 0, 4], tf.float32), seed=seed,
      min_object_covered=0.0, aspect_ratio_range=tuple(aspect_ratio_range),
      area_range=tuple(area_range), use_image_if_no_bounding_boxes=True)
  crop = tf.slice(clip, tf.concat([[0], begin[:2], [0]], 0), tf.concat([[-1], size[:2], [-1]], 0))
  return resize(crop, crop_size, crop_size)


# --- RandAugment --------------------------------------------------------------

def randaugment(clip, num_layers: int, magnitude: float, seed) -> tf.Tensor:
  """`num_layers` ops drawn uniformly from RANDAUGMENT_OPS, each with a random sign.

  One draw per clip: every frame gets the same ops at the same strength.
  `magnitude` is on the 0..10 scale of the RandAugment paper; 0 leaves the
  clip unchanged.
  """
  level = min(max(float(magnitude), 0.0), allowed.RANDAUGMENT_MAX_MAGNITUDE)
  level /= allowed.RANDAUGMENT_MAX_MAGNITUDE
  for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
    op_seed, sign_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))
    op = tf.random.stateless_uniform([], op_seed, 0, len(RANDAUGMENT_OPS), dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
    clip = apply_op(clip, op, level * sign)
  return clip


def apply_op(clip, op_index, signed_level) -> tf.Tensor:
  """RANDAUGMENT_OPS[op_index](clip, signed_level), with a traced index."""
  branches = [lambda f=f: f(clip, signed_level) for f in RANDAUGMENT_OPS.values()]
  return tf.switch_case(op_index, branches)


def _blend(base, clip, factor) -> tf.Tensor:
  """base + factor * (clip - base), clipped: factor 1 is `clip` itself (PIL's blend)."""
  clip = tf.cast(clip, tf.float32)
  out = base + factor * (clip - base)
  return tf.saturate_cast(tf.round(tf.clip_by_value(out, 0.0, 255.0)), tf.uint8)


def _grey(clip) -> tf.Tensor:
  """ITU-R 601 luma, (T, H, W, 1) float32."""
  return tf.image.rgb_to_grayscale(tf.cast(clip, tf.float32))


def _enhance_factor(signed_level):
  return 1.0 + 0.9 * signed_level  # 0.1 .. 1.9, as in RandAugment implementations


def identity(clip, signed_level):
  del signed_level
  return clip


def autocontrast(clip, signed_level):
  """Stretches each channel to 0..255, using the clip's min and max."""
  del signed_level
  x = tf.cast(clip, tf.float32)
  low = tf.reduce_min(x, axis=[0, 1, 2])
  high = tf.reduce_max(x, axis=[0, 1, 2])
  scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
  offset = tf.where(high > low, low, 0.0)
  return tf.saturate_cast(tf.round((x - offset) * scale), tf.uint8)


def equalize(clip, signed_level):
  """Histogram equalisation per channel (PIL's algorithm) over the whole clip."""
  del signed_level
  channels = [_equalize_channel(clip[..., c]) for c in range(3)]
  return tf.stack(channels, axis=-1)


def _equalize_channel(channel):
  values = tf.cast(channel, tf.int32)
  hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
  last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
  step = (tf.reduce_sum(hist) - last) // 255
  safe_step = tf.maximum(step, 1)
  lut = (tf.cumsum(hist) + safe_step // 2) // safe_step
  lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
  equalized = tf.cast(tf.gather(lut, values), tf.uint8)
  return tf.where(step > 0, equalized, channel)


def solarize(clip, signed_level):
  """Inverts pixels at or above a threshold that falls from 256 (level 0) to 0."""
  threshold = tf.math.ceil(256.0 - tf.abs(signed_level) * 256.0)
  # Compared in uint8 (cheap); a threshold of 256 inverts nothing.
  invert = (clip >= tf.saturate_cast(threshold, tf.uint8)) & (threshold < 256.0)
  return tf.where(invert, 255 - clip, clip)


def posterize(clip, signed_level):
  """Keeps 8 (level 0) down to 4 (level 1) high bits."""
  shift = tf.cast(tf.abs(signed_level) * 4.0, tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(clip, shift), shift)


def color(clip, signed_level):
  return _blend(_grey(clip), clip, _enhance_factor(signed_level))


def contrast(clip, signed_level):
  return _blend(tf.reduce_mean(_grey(clip)), clip, _enhance_factor(signed_level))


def brightness(clip, signed_level):
  return _blend(0.0, clip, _enhance_factor(signed_level))


def sharpness(clip, signed_level):
  """Blend with PIL's 3x3 smoothing filter; border pixels stay as they are."""
  # The filter [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 as a separable 3x3 box sum
  # plus 4x the centre: a few adds, far cheaper than a depthwise convolution on CPU.
  x = tf.cast(clip, tf.float32)
  columns = x[:, :-2] + x[:, 1:-1] + x[:, 2:]
  box = columns[:, :, :-2] + columns[:, :, 1:-1] + columns[:, :, 2:]
  smooth = (box + 4.0 * x[:, 1:-1, 1:-1]) / 13.0
  inner = _blend(tf.round(smooth), clip[:, 1:-1, 1:-1], _enhance_factor(signed_level))
  rows = tf.concat([clip[:, 1:-1, :1], inner, clip[:, 1:-1, -1:]], axis=2)
  return tf.concat([clip[:, :1], rows, clip[:, -1:]], axis=1)


def rotate(clip, signed_level):
  """Rotation about the centre by up to 30 degrees."""
  angle = signed_level * math.radians(30.0)
  shape = tf.cast(tf.shape(clip), tf.float32)
  cy, cx = (shape[1] - 1.0) / 2.0, (shape[2] - 1.0) / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  # Output (x, y) samples input (cos x - sin y + ox, sin x + cos y + oy).
  return _transform(clip, [cos, -sin, cx - cos * cx + sin * cy,
                           sin, cos, cy - sin * cx - cos * cy])


def shear_x(clip, signed_level):
  return _transform(clip, [1.0, signed_level * 0.3, 0.0, 0.0, 1.0, 0.0])


def shear_y(clip, signed_level):
  return _transform(clip, [1.0, 0.0, 0.0, signed_level * 0.3, 1.0, 0.0])


def translate_x(clip, signed_level):
  """Shift by up to 45% of the width (timm's translate_pct)."""
  shift = signed_level * 0.45 * tf.cast(tf.shape(clip)[2], tf.float32)
  return _transform(clip, [1.0, 0.0, shift, 0.0, 1.0, 0.0])


def translate_y(clip, signed_level):
  shift = signed_level * 0.45 * tf.cast(tf.shape(clip)[1], tf.float32)
  return _transform(clip, [1.0, 0.0, 0.0, 0.0, 1.0, shift])


def _transform(clip, affine) -> tf.Tensor:
  """One affine map (output -> input pixel coordinates) for every frame, grey fill.

  Nearest-neighbour on the uint8 frames, as TF's and big_vision's RandAugment:
  about 3x cheaper than bilinear on float copies.
  """
  transform = tf.cast(tf.stack(affine + [0.0, 0.0])[None], tf.float32)
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=clip, transforms=transform, output_shape=tf.shape(clip)[1:3],
      fill_value=_FILL, interpolation="NEAREST", fill_mode="CONSTANT")


# name -> op(clip uint8, signed level in [-1, 1]) -> clip uint8. Unsigned ops
# ignore the sign. The RandAugment paper's list (timm's `rand_increasing` levels).
RANDAUGMENT_OPS = {
    "identity": identity, "autocontrast": autocontrast, "equalize": equalize,
    "rotate": rotate, "solarize": solarize, "color": color, "posterize": posterize,
    "contrast": contrast, "brightness": brightness, "sharpness": sharpness,
    "shear_x": shear_x, "shear_y": shear_y, "translate_x": translate_x,
    "translate_y": translate_y,
}

