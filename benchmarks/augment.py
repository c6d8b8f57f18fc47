r"""What each training augmentation costs on tf.data: CPU time per clip, one thread.

  python benchmarks/augment.py                          # 8 frames, 256x340 -> 224
  python benchmarks/augment.py --frames=16 --num_clips=100

Times `augment.train_augment` on decoded uint8 clips shaped like Kinetics
frames stored at short side 256 (no JPEG decoding: see the input-pipeline
benchmark for that), for every crop kind with RandAugment off and on
(2 ops at magnitude 9), one tf.data thread and one intra-op thread, and prints
a table. 'copy' is the clip passing through the same map unchanged: the
tf.data overhead the others include.
"""

from __future__ import annotations

import time

from absl import app, flags
import numpy as np
import tensorflow as tf

from cover_jax.config import allowed, defaults
from cover_jax.input import augment

_FRAMES = flags.DEFINE_integer("frames", 8, "Frames per clip.")
_HEIGHT = flags.DEFINE_integer("height", 256, "Stored frame height (the short side).")
_WIDTH = flags.DEFINE_integer("width", 340, "Stored frame width.")
_CROP = flags.DEFINE_integer("crop", 224, "Crop size.")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", 40, "Clips timed per row (after 4 warm-up).")


def _cpu_ms_per_clip(fn, clip, num_clips: int) -> float:
  """CPU time per clip of `fn(clip, seed)` over fresh seeds, in a one-thread tf.data map.

  CPU time, not wall time: on a shared machine it still measures the work.
  """
  ds = tf.data.Dataset.zip(tf.data.Dataset.counter(), tf.data.Dataset.from_tensors(clip).repeat())
  ds = ds.map(lambda i, c: tf.reduce_sum(tf.cast(fn(c, tf.stack([i, i + 1])), tf.int32)),
              num_parallel_calls=1)
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options)
  ds.take(4).reduce(0, lambda a, x: a + x)  # warm-up: graph building
  start = time.process_time()
  ds.take(num_clips).reduce(0, lambda a, x: a + x)
  return (time.process_time() - start) * 1000 / num_clips


def _rows():
  crop = _CROP.value
  yield "copy", lambda c, s: c
  for kind in allowed.AUGMENT_KINDS:
    for layers in (0, 2):
      cfg = defaults.augment_config(kind=kind, short_side_range=(256, 320),
                                           randaugment_layers=layers, randaugment_magnitude=9)
      name = kind + (" + RandAugment(2, 9)" if layers else "")
      yield name, lambda c, s, cfg=cfg: augment.train_augment(
          c, cfg, crop_size=crop, flip=True, crop_seed=s,
          flip_seed=tf.random.experimental.stateless_fold_in(s, 7))


def main(argv):
  del argv
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  rng = np.random.default_rng(0)
  clip = tf.constant(rng.integers(0, 256, (_FRAMES.value, _HEIGHT.value, _WIDTH.value, 3)),
                     tf.uint8)
  print(f"{_FRAMES.value} frames {_HEIGHT.value}x{_WIDTH.value} -> {_CROP.value}, one core")
  print(f"| {'augmentation':<42} | CPU ms/clip | clips/s per core |")
  print(f"|{'-' * 44}|-------------|------------------|")
  for name, fn in _rows():
    ms = _cpu_ms_per_clip(fn, clip, _NUM_CLIPS.value)
    print(f"| {name:<42} | {ms:11.1f} | {1000 / ms:16.1f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
