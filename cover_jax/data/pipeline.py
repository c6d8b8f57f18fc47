"""One tf.data pipeline per dataset: frames in, normalised clip batches out.

train: random clip of T frames at a stride (looping videos shorter than the
       clip) -> the dataset's augmentation (augment.py: crop / scale jitter /
       random resized crop, flip where the dataset allows it, RandAugment; the
       same for every frame) -> normalise -> batch.
eval:  the centre clip -> centre crop -> normalise -> padded batches with a
       `mask`, so every process runs the same number of full batches.

Images are videos with T=1. Randomness is stateless, seeded by (dataset seed,
example position in the stream), so a pipeline is deterministic for a seed and
can be restarted at any batch by skipping raw examples (cheap: the decoded set
is cached) instead of replaying augmentation.
"""

from __future__ import annotations

import dataclasses
import os
import zlib

import tensorflow as tf
import tensorflow_datasets as tfds

from cover_jax.data import augment, builders
from cover_jax.data.augment import random_crop, random_flip  # noqa: F401  (pipeline's API)

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the trainer needs to know about one configured dataset."""
  name: str
  config: object  # the dataset's ConfigDict
  builder: tfds.core.DatasetBuilder
  class_names: tuple[str, ...]

  @property
  def is_video(self) -> bool:
    return builders.IS_VIDEO[self.config.source]

  @property
  def num_test_examples(self) -> int:
    return self.builder.info.splits["test"].num_examples


def default_data_dir(config_data_dir: str) -> str:
  return config_data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")


def prepare_datasets(config) -> dict[str, DatasetSpec]:
  """Builds missing embedded datasets and returns a spec per configured dataset."""
  data_dir = default_data_dir(config.data_dir)
  specs = {}
  for name, ds in sorted(config.datasets.items()):
    syn = ds.synthetic
    builder = builders.build(ds.source, data_dir, num_train=syn.num_train, num_test=syn.num_test,
                             size=syn.size, num_frames=syn.num_frames, seed=syn.seed)
    names = tuple(builder.info.features["label"].names)
    specs[name] = DatasetSpec(name, ds, builder, names)
  return specs


def dataset_seed(global_seed: int, name: str, process_index: int) -> int:
  """A per-dataset, per-process seed (stable across runs and machines)."""
  return (global_seed * 1_000_003 + zlib.crc32(name.encode()) + 7919 * process_index) % (2 ** 31)


def _as_frames(example: dict) -> dict:
  """Common form {'frames': uint8 (F, H, W, 3), 'label': int32}; images get F=1."""
  frames = example["video"] if "video" in example else example["image"][None]
  return {"frames": frames, "label": tf.cast(example["label"], tf.int32)}


def _read(spec: DatasetSpec, split: str, process_index: int, process_count: int,
          drop_remainder: bool) -> tf.data.Dataset:
  split = tfds.split_for_jax_process(split, process_index=process_index,
                                     process_count=process_count, drop_remainder=drop_remainder)
  ds = spec.builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(_as_frames, num_parallel_calls=AUTOTUNE)


def clip_indices(num_available, num_frames: int, stride: int, start) -> tf.Tensor:
  """Frame indices start, start+stride, ... wrapped around short videos."""
  return tf.math.floormod(start + tf.range(num_frames) * stride, num_available)


def sample_train_clip(frames, num_frames: int, stride: int, seed) -> tf.Tensor:
  """A random clip of `num_frames` frames at `stride`."""
  available = tf.shape(frames)[0]
  span = (num_frames - 1) * stride + 1
  max_start = tf.maximum(available - span, 0)
  start = tf.random.stateless_uniform([], seed, 0, max_start + 1, dtype=tf.int32)
  return tf.gather(frames, clip_indices(available, num_frames, stride, start))


def sample_centre_clip(frames, num_frames: int, stride: int) -> tf.Tensor:
  available = tf.shape(frames)[0]
  span = (num_frames - 1) * stride + 1
  start = tf.maximum(available - span, 0) // 2
  return tf.gather(frames, clip_indices(available, num_frames, stride, start))


def centre_crop(clip, size: int) -> tf.Tensor:
  shape = tf.shape(clip)
  top, left = (shape[1] - size) // 2, (shape[2] - size) // 2
  return clip[:, top:top + size, left:left + size, :]


def normalise(clip, mean, std) -> tf.Tensor:
  clip = tf.cast(clip, tf.float32) / 255.0
  return (clip - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def train_dataset(spec: DatasetSpec, *, global_seed: int, mean, std, process_index: int = 0,
                  process_count: int = 1, start_batch: int = 0) -> tf.data.Dataset:
  """Infinite, deterministic stream of per-process training batches.

  Args:
    start_batch: how many batches of this dataset were already consumed (for
      resuming): the stream continues exactly where such a run would be.
  """
  cfg = spec.config
  aug_cfg = augment.config_of(cfg)
  local_batch = cfg.batch_size // process_count
  seed = dataset_seed(global_seed, spec.name, process_index)
  ds = _read(spec, "train", process_index, process_count, drop_remainder=True)
  if cfg.cache:
    ds = ds.cache()
  ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  first_example = start_batch * local_batch
  ds = ds.skip(first_example)

  def sample_and_augment(index, example):
    seeds = tf.random.experimental.stateless_split(tf.stack([tf.cast(seed, tf.int64), index]), 3)
    clip = sample_train_clip(example["frames"], cfg.num_frames, cfg.stride, seeds[0])
    clip = augment.train_augment(clip, aug_cfg, crop_size=cfg.crop_size, flip=cfg.flip,
                                 crop_seed=seeds[1], flip_seed=seeds[2])
    return {"video": normalise(clip, mean, std), "label": example["label"]}

  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(first_example), ds)
  ds = ds.map(sample_and_augment, num_parallel_calls=AUTOTUNE, deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return _with_options(ds).prefetch(AUTOTUNE)


def eval_dataset(spec: DatasetSpec, *, mean, std, process_index: int = 0,
                 process_count: int = 1) -> tuple[tf.data.Dataset, int]:
  """Centre-clip eval batches padded to equal counts on every process.

  Returns:
    (dataset, num_batches): batches carry `mask` (1 real, 0 padding).
  """
  cfg = spec.config
  local_batch = cfg.eval_batch_size // process_count
  per_process = -(-spec.num_test_examples // process_count)
  num_batches = -(-per_process // local_batch)

  def preprocess(example):
    clip = sample_centre_clip(example["frames"], cfg.num_frames, cfg.stride)
    clip = centre_crop(clip, cfg.crop_size)
    return {"video": normalise(clip, mean, std), "label": example["label"],
            "mask": tf.constant(1, tf.int32)}

  ds = _read(spec, "test", process_index, process_count, drop_remainder=False)
  ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True)
  padding = ds.take(1).map(lambda ex: {k: tf.zeros_like(v) for k, v in ex.items()}).repeat()
  ds = ds.concatenate(padding).take(num_batches * local_batch)
  ds = ds.batch(local_batch, drop_remainder=True)
  if cfg.cache:
    ds = ds.cache()
  return _with_options(ds).prefetch(AUTOTUNE), num_batches


def _with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  return ds.with_options(options)

