"""One tf.data training pipeline per dataset: encoded frames in, uint8 clip batches out.

The eval input (every test video as its K x S views) is evaluation/dataset.py;
the pieces both use (parsing and checking an example, decoding frames,
resizing) are here.

train: raw records (cached if configured) -> shuffle -> repeat -> number each
       example by its stream position -> [parse -> check label and frame count
       -> pick a random clip of T frames (looping short videos) -> decode only
       those T frames -> the dataset's augmentation (augment.py: crop / scale
       jitter / random resized crop, flip where allowed, RandAugment; one
       transform for the whole clip)] -> drop failures -> batch (uint8;
       normalised on the devices).
Bad input is skipped and counted, never fatal: the bracketed map may fail on
a corrupt JPEG, a zero-frame sequence, a label outside the class list or an
unreadable file; `ignore_errors` drops that example. Train batches carry each
example's stream position (`index`); the maps are deterministic, so a gap in
the positions the host sees is a skipped example (`SkipCounter`). Eval counts
skips as test videos expected but not seen (evaluation/dataset.py).

Images are videos with T=1. Randomness is stateless, seeded by (dataset seed,
stream position), so a pipeline is deterministic for a seed and can restart at
any batch by skipping raw records (cheap: nothing is decoded before the skip)
instead of replaying augmentation. Skipped examples make the stream position
run ahead of batches x batch size, so checkpoints record each shard's position
(`SkipCounter.next_position`, `train_dataset(start_position=...)`) and a
restart is exact either way.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import zlib

from absl import logging
import numpy as np
import tensorflow as tf

from cover_jax.config import defaults
from cover_jax.input import augment, sources

AUTOTUNE = tf.data.AUTOTUNE
DatasetError = sources.DatasetError
_PROBE_RECORDS = 32  # records tried at start-up before a dataset is declared unreadable


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the trainer needs to know about one configured dataset."""
  name: str
  config: object  # the dataset's ConfigDict
  source: sources.Source
  class_names: tuple[str, ...]

  @property
  def is_video(self) -> bool:
    return self.source.is_video

  @property
  def num_test_examples(self) -> int:
    return self.source.num_examples(self.config.eval_split)


def default_data_dir(config_data_dir: str) -> str:
  return config_data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser(
      "~/tensorflow_datasets")


def prepare_datasets(config) -> dict[str, DatasetSpec]:
  """Opens (and builds missing embedded) datasets; a spec per configured dataset.

  Raises:
    DatasetError: a dataset has no examples, is not prepared, or none of its
      first records can be read; class_list.ClassListError: its classes.txt
      disagrees with its records.
  """
  data_dir = default_data_dir(config.data_dir)
  names = sorted(config.datasets)
  # Concurrently: building an embedded set is mostly TensorFlow's image
  # encoding, which runs without the GIL (the demo's three build in about
  # half the time of one after another).
  with concurrent.futures.ThreadPoolExecutor(len(names) or 1) as pool:
    opened = list(pool.map(lambda n: _open(n, config.datasets[n], data_dir), names))
  return dict(zip(names, opened))


def _open(name: str, ds, data_dir: str) -> DatasetSpec:
  source = sources.open_source(name, ds, data_dir)
  spec = DatasetSpec(name, ds, source, source.class_names)
  if not source.generated_here:  # the embedded sets decode by construction
    check_readable(spec)
  return spec


def dataset_seed(global_seed: int, name: str, shard_index: int) -> int:
  """A per-dataset, per-process seed (stable across runs and machines)."""
  return (global_seed * 1_000_003 + zlib.crc32(name.encode()) + 7919 * shard_index) % (2 ** 31)


def checked_example(spec: DatasetSpec, raw) -> tuple[tf.Tensor, tf.Tensor]:
  """(encoded frames, int32 label); fails (and so skips) zero-frame or mislabelled examples."""
  example = spec.source.parse(raw)
  encoded, label = example["encoded"], tf.cast(example["label"], tf.int32)
  name = example["name"]
  checks = [  # tf.debugging.Assert: the failure message names the example
      tf.debugging.Assert(tf.size(encoded) > 0, ["no frames in", name]),
      tf.debugging.Assert((label >= 0) & (label < len(spec.class_names)),
                          ["label", label, "not in the class list in", name])]
  with tf.control_dependencies(checks):
    return tf.identity(encoded), tf.identity(label)


def decode_frames(encoded, jpeg_only: bool) -> tf.Tensor:
  """string (T,) -> uint8 (T, H, W, 3); fails on a corrupt frame or frames of unequal size."""
  if jpeg_only:
    decode = lambda x: tf.io.decode_jpeg(x, channels=3)
  else:
    decode = lambda x: tf.io.decode_image(x, channels=3, expand_animations=False)
  return tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def resize_short_side(frames, short_side) -> tf.Tensor:
  """uint8 (..., H, W, 3) resized (antialiased) so that min(H, W) == short_side."""
  shape = tf.shape(frames)
  height, width = tf.cast(shape[-3], tf.float32), tf.cast(shape[-2], tf.float32)
  scale = tf.cast(short_side, tf.float32) / tf.minimum(height, width)
  size = tf.cast(tf.round(tf.stack([height * scale, width * scale])), tf.int32)
  size = tf.maximum(size, short_side)
  resized = tf.image.resize(frames, size, method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def at_least(frames, size: int) -> tf.Tensor:
  """Frames with a short side below `size` (small images) enlarged to it; others untouched."""
  shape = tf.shape(frames)
  return tf.cond(tf.minimum(shape[-3], shape[-2]) < size,
                 lambda: resize_short_side(frames, size), lambda: frames)


def clip_indices(num_available, num_frames: int, stride: int, start) -> tf.Tensor:
  """Frame indices start, start+stride, ... wrapped around short videos."""
  return tf.math.floormod(start + tf.range(num_frames) * stride, num_available)


def segment_indices(num_available, num_frames: int, offset) -> tf.Tensor:
  """One frame per segment of T equal segments (offset in [0, 1): where in each segment)."""
  size = tf.cast(num_available, tf.float32) / num_frames
  index = tf.floor((tf.range(num_frames, dtype=tf.float32) + offset) * size)
  return tf.minimum(tf.cast(index, tf.int32), num_available - 1)


def train_frame_indices(num_available, cfg, seed) -> tf.Tensor:
  """Which T frames a training clip takes: a random start (stride) or random per segment."""
  if cfg.get("sampling", "stride") == "segment":
    return segment_indices(num_available, cfg.num_frames,
                           tf.random.stateless_uniform([cfg.num_frames], seed))
  span = (cfg.num_frames - 1) * cfg.stride + 1
  max_start = tf.maximum(num_available - span, 0)
  start = tf.random.stateless_uniform([], seed, 0, max_start + 1, dtype=tf.int32)
  return clip_indices(num_available, cfg.num_frames, cfg.stride, start)


def _augment_train_clip(clip_thwc_uint8, cfg, seeds) -> tf.Tensor:
  """The dataset's training augmentation of one uint8 clip (augment.py)."""
  return augment.train_augment(clip_thwc_uint8, defaults.augment_of(cfg), crop_size=cfg.crop_size,
                               flip=cfg.flip, crop_seed=seeds[0], flip_seed=seeds[1])


def _train_example(spec: DatasetSpec, seed: int):
  """The fallible per-example train map: (stream position, raw record) -> example."""
  cfg = spec.config

  def fn(index, raw):
    encoded, label = checked_example(spec, raw)
    seeds = tf.random.experimental.stateless_split(tf.stack([tf.cast(seed, tf.int64), index]), 3)
    indices = train_frame_indices(tf.shape(encoded)[0], cfg, seeds[0])
    clip = at_least(decode_frames(tf.gather(encoded, indices), spec.source.jpeg_only),
                    cfg.crop_size)
    clip = _augment_train_clip(clip, cfg, seeds[1:])
    return {"video": clip, "label": label, "index": index}
  return fn


def train_dataset(spec: DatasetSpec, *, global_seed: int, shard_index: int = 0,
                  num_shards: int = 1, start_position: int = 0) -> tf.data.Dataset:
  """Infinite, deterministic stream of per-process training batches.

  Batches hold 'video' (uint8 (B, T, crop, crop, 3): normalised on the devices,
  device.normalise, since float32 clips cost 4x the host memory, copies and
  transfer), 'label' and 'index' (each example's stream position;
  `SkipCounter` turns gaps into skip counts and drops the key).

  Args:
    start_position: the stream position to continue from (resuming): the
      interrupted run's `SkipCounter.next_position`, exact also when examples
      were skipped (each skip moves the stream one record further).
  """
  cfg = spec.config
  local_batch = cfg.batch_size // num_shards
  seed = dataset_seed(global_seed, spec.name, shard_index)
  ds = spec.source.read(cfg.train_split, shard_index, num_shards, train=True)
  if cfg.cache:
    ds = ds.cache()
  ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
  ds = ds.skip(start_position)
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(start_position), ds)
  ds = ds.map(graph_only(_train_example(spec, seed)), num_parallel_calls=AUTOTUNE,
              deterministic=True)
  ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return with_options(ds).prefetch(AUTOTUNE)


def check_readable(spec: DatasetSpec) -> None:
  """Fails fast, naming the dataset and the error, when none of its first records reads."""
  cfg = spec.config
  fn = _train_example(spec, 0)
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(),
                           spec.source.read(cfg.train_split, 0, 1).take(_PROBE_RECORDS))
  first_error = None
  for index, raw in ds:
    try:
      fn(index, raw)
      return
    except (tf.errors.OpError, ValueError) as e:
      first_error = first_error or e
  raise DatasetError(
      f"dataset {spec.name!r} ({spec.source.describe()}): none of the first {_PROBE_RECORDS} "
      f"training examples could be read; the first failed with: "
      f"{str(first_error).splitlines()[0] if first_error else 'no examples'}. Check that the "
      f"records are the format of source={cfg.source!r} (frames JPEG-encoded, labels "
      f"0..{len(spec.class_names) - 1}) and config.datasets.{spec.name}.crop_size fits the frames")


class SkipCounter:
  """Wraps a numpy batch iterator: counts gaps in the examples' positions (skipped examples).

  Logs the first `log_first` skipped positions of the dataset; drops 'index'
  from the batches it passes on.
  """

  def __init__(self, name: str, batches, first_position: int, log_first: int = 5):
    self.name, self.batches, self.log_first = name, batches, log_first
    self.next_position = first_position
    self.skipped = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = dict(next(self.batches))
    positions = batch.pop("index")
    missing = np.setdiff1d(np.arange(self.next_position, positions[-1] + 1), positions)
    if missing.size:
      if self.skipped < self.log_first:
        logging.warning("dataset %s: skipped unreadable example(s) at stream position(s) %s "
                        "(the reason is in TensorFlow's warning just before)", self.name,
                        missing[:self.log_first - self.skipped].tolist())
      self.skipped += int(missing.size)
    self.next_position = int(positions[-1]) + 1
    return batch


def graph_only(fn):
  """A map function traced as written, without AutoGraph's conversion.

  Ours branch only on static config values (Python `if`s on settings, tf.cond
  on tensors), so the conversion changes nothing but takes about half of a
  pipeline's construction time, paid by every run and every evaluation.
  """
  return tf.autograph.experimental.do_not_convert(fn)


def with_options(ds: tf.data.Dataset) -> tf.data.Dataset:
  """Deterministic order; parallel maps on every core, without tf.data's autotuning thread.

  Autotuning runs a model thread per iterator that sleeps for its
  optimisation period (growing to a minute), and destroying the iterator
  waits for that sleep to end: a run that had finished stayed alive for up
  to a minute after its last line, and every in-process run in a test paid
  it too. Without that thread, AUTOTUNE parallelism starts (and stays) at
  `initial_parallelism`, here every core, and prefetch buffers still grow on
  their own (tf.data's legacy prefetch autotuner). Element order does not
  depend on parallelism (deterministic maps), so results are unchanged.
  """
  options = tf.data.Options()
  options.deterministic = True
  options.experimental_optimization.map_parallelization = True
  options.autotune.enabled = False
  options.autotune.initial_parallelism = os.cpu_count() or 1
  return ds.with_options(options)
