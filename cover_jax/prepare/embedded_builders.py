"""TFDS builders for the synthetic CoVeR datasets (see `synthetic.py`).

Each source is a real `tfds.core.GeneratorBasedBuilder`, so the training
pipeline reads it exactly like Kinetics or ImageNet would be read. The builder
config carries the generation parameters (num_train, num_test, size,
num_frames, seed, noise) and its name encodes them (e.g. `s40_f16_n1500-300_seed0`;
a noise other than the default adds `_noise24`), so datasets of different
sizes and difficulties live side by side in one data_dir:

    data_dir/cover_synthetic_motion/s40_f16_n1500-300_seed0/1.0.0/

The builders are not registered with TFDS (they live outside a TFDS package and
must not clash if this module is imported twice); open a dataset with `build()`
or, without this module, with `tfds.builder_from_directory(<that path>)`.

`build()` generates nothing if the dataset is already prepared, never touches
the network, and is safe when several processes build the same dataset into
the same data_dir at once (see `build` for how).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import random
import threading
from typing import ClassVar

from absl import logging
from etils import epath
import tensorflow as tf
import tensorflow_datasets as tfds

from cover_jax.prepare import synthetic

_VERSION = tfds.core.Version("1.0.0")
_RELEASE_NOTES = {"1.0.0": "Initial release."}


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
  """Generation parameters of one synthetic dataset variant.

  Attributes:
    num_train: number of training examples.
    num_test: number of test examples.
    size: frame height and width in pixels.
    num_frames: frames per video (1 for images).
    seed: generation seed; train and test use different streams of it.
    noise: per-pixel noise amplitude, the difficulty knob (synthetic.py).
  """

  num_train: int
  num_test: int
  size: int
  num_frames: int
  seed: int = 0
  noise: int = synthetic.NOISE_AMPLITUDE

  @classmethod
  def create(cls, *, num_train: int, num_test: int, size: int, num_frames: int,
             seed: int = 0, noise: int = synthetic.NOISE_AMPLITUDE) -> SyntheticConfig:
    """Builds a config whose name encodes every generation parameter."""
    for what, value in (("num_train", num_train), ("num_test", num_test), ("size", size),
                        ("num_frames", num_frames)):
      if int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if int(noise) != noise or not 0 <= noise <= synthetic.MAX_NOISE:
      raise ValueError(f"noise must be an integer in [0, {synthetic.MAX_NOISE}], got {noise!r}")
    # The default noise leaves the name as it was before the knob existed, so
    # datasets already built are found again.
    suffix = "" if noise == synthetic.NOISE_AMPLITUDE else f"_noise{noise}"
    name = f"s{size}_f{num_frames}_n{num_train}-{num_test}_seed{seed}{suffix}"
    return cls(name=name, version=_VERSION, release_notes=dict(_RELEASE_NOTES),
               description=f"{size}x{size} px, {num_frames} frame(s), {num_train} train / "
                           f"{num_test} test examples, seed {seed}, noise +-{noise}.",
               num_train=int(num_train), num_test=int(num_test), size=int(size),
               num_frames=int(num_frames), seed=int(seed), noise=int(noise))


class LocalDatasetInfo(tfds.core.DatasetInfo):
  """DatasetInfo that never looks for precomputed info on GCS.

  TFDS calls `initialize_from_bucket` for every builder constructed before its
  dataset exists, and that leaves an empty `/tmp/tmp*tfds` dir behind each
  time; these datasets are never on GCS, so there is nothing to fetch.
  """

  def initialize_from_bucket(self) -> None:
    pass


class _SyntheticBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic; subclasses set SOURCE and describe their features."""

  VERSION = _VERSION
  RELEASE_NOTES = dict(_RELEASE_NOTES)
  SOURCE: ClassVar[str] = ""
  DESCRIPTION: ClassVar[str] = ""

  # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and
  # prepared" to stdout (nothing is downloaded: the data is generated); a run
  # building its embedded data logs them instead of interrupting its story.
  def _log_download_bytes(self) -> None:
    logging.info("generating %s/%s in %s", self.name, self.builder_config.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("generated %s in %s", self.name, self.data_dir)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. Overridden because TFDS's version, for a builder defined in a
    package, needs the `importlib_resources` backport, which is not installed."""
    return epath.Path(__file__)

  @property
  def _config(self) -> SyntheticConfig:
    if not isinstance(self.builder_config, SyntheticConfig):
      raise ValueError(f"{type(self).__name__} needs config=SyntheticConfig.create(...); "
                       "or use cover_jax.prepare.embedded_builders.build().")
    return self.builder_config

  def _features(self, config: SyntheticConfig, names: list[str]) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    names = synthetic.class_names(self.SOURCE)
    features = self._features(self._config, names)
    data_key = "video" if IS_VIDEO[self.SOURCE] else "image"
    # DatasetInfo(builder=self) because these builders are not in a TFDS
    # package directory, which `dataset_info_from_configs` would look for.
    return LocalDatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=features,
        supervised_keys=(data_key, "label"),
        homepage="https://arxiv.org/abs/2112.07175",
        citation="Synthetic data generated by cover_jax.prepare.synthetic.",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is generated locally; nothing to download.
    config = self._config
    return {"train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test)}

  def _generate_examples(self, split: str, num_examples: int):
    config = self._config
    examples = synthetic.generate_examples(self.SOURCE, split, num_examples,
                                           num_frames=config.num_frames, size=config.size,
                                           seed=config.seed, noise=config.noise)
    for key, example in examples:
      if "video" in example:  # TFDS would encode the frames one eager call at a time
        example = {**example, "video": list(_encode_png_frames(example["video"]).numpy())}
      yield key, example


@tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
def _encode_png_frames(video_thwc):
  """A video's frames as PNG bytes, in one call: the bytes TFDS's Video feature would write
  frame by frame (the same encoder and settings), about 10x faster for small frames."""
  return tf.map_fn(tf.image.encode_png, video_thwc, fn_output_signature=tf.string)


class _VideoBuilder(_SyntheticBuilder, skip_registration=True):

  def _features(self, config, names):
    shape = (config.num_frames, config.size, config.size, 3)
    return tfds.features.FeaturesDict({
        "video": tfds.features.Video(shape=shape, encoding_format="png"),
        "label": tfds.features.ClassLabel(names=names),
    })


class CoverSyntheticAppearance(_VideoBuilder, skip_registration=True):
  """Kinetics-like videos: the label is the object (colour, shape)."""

  SOURCE = "synthetic_appearance"
  DESCRIPTION = ("Videos of one two-tone object moving, bouncing, drifting in size and "
                 "rotation at random; the label is the object (colour and shape).")


class CoverSyntheticMotion(_VideoBuilder, skip_registration=True):
  """Something-Something-like videos: the label is the motion. Never flip."""

  SOURCE = "synthetic_motion"
  DESCRIPTION = ("Videos of a random object moving left/right/up/down, rotating "
                 "clockwise/counter-clockwise, growing or shrinking; the label is the "
                 "motion. Classes come in time-reversed pairs. Do not flip horizontally.")


class CoverSyntheticImages(_SyntheticBuilder, skip_registration=True):
  """ImageNet-like images over the whole (colour, shape) vocabulary."""

  SOURCE = "synthetic_images"
  DESCRIPTION = ("Images of one two-tone object at a random place, size and angle; the "
                 "label is the object (colour and shape), a superset of the appearance "
                 "video classes.")

  def _features(self, config, names):
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(config.size, config.size, 3),
                                     encoding_format="png"),
        "label": tfds.features.ClassLabel(names=names),
    })


SOURCES: dict[str, type] = {
    "synthetic_appearance": CoverSyntheticAppearance,
    "synthetic_motion": CoverSyntheticMotion,
    "synthetic_images": CoverSyntheticImages,
}
IS_VIDEO: dict[str, bool] = {
    "synthetic_appearance": True,
    "synthetic_motion": True,
    "synthetic_images": False,
}


def _builder_class(source: str) -> type:
  if source not in SOURCES:
    raise ValueError(f"Unknown dataset source {source!r}; allowed sources: {sorted(SOURCES)}.")
  return SOURCES[source]


def num_classes(source: str) -> int:
  """Number of classes of a source; ValueError for an unknown source."""
  _builder_class(source)
  return len(synthetic.class_names(source))


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str):
  """Serialises builds of one dataset across processes (local file systems).

  Without it, concurrent builders all generate the data and all but one fail
  when renaming their temp dir onto the finished one (handled in `build`).
  Remote paths (gs://...) get no lock and rely on that fallback.
  """
  if "://" in data_dir:
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{name}.lock"), "a") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


_random_lock = threading.Lock()
_random_users = {"count": 0, "state": None}  # builds in progress, the state to restore


@contextlib.contextmanager
def _fresh_python_random():
  """Reseeds `random` from the OS while builds run, then restores its state.

  TFDS names its temp dir with `random.choice`: two processes that seeded
  `random` identically (common in training scripts) would otherwise write
  into the same temp dir. Builds may run in threads at once (pipeline.py):
  the first to start saves the state, the last to finish restores it.
  """
  with _random_lock:
    if _random_users["count"] == 0:
      _random_users["state"] = random.getstate()
      random.seed()
    _random_users["count"] += 1
  try:
    yield
  finally:
    with _random_lock:
      _random_users["count"] -= 1
      if _random_users["count"] == 0:
        random.setstate(_random_users["state"])


def _prepare(builder: tfds.core.DatasetBuilder) -> None:
  with _fresh_python_random():
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))


def build(source: str, data_dir: str, *, num_train: int, num_test: int, size: int,
          num_frames: int, seed: int = 0,
          noise: int = synthetic.NOISE_AMPLITUDE) -> tfds.core.DatasetBuilder:
  """Returns the prepared builder of a synthetic dataset, generating it if needed.

  Generation is offline and happens only if the variant is not yet prepared in
  `data_dir`. Concurrent calls are safe: a per-dataset file lock makes later
  callers wait and reuse the result, and should two builds still race (no
  lock on remote file systems), TFDS writes each into its own temp dir and
  renames it into place atomically; the loser's rename fails, and the
  finished dataset is reopened instead.

  Args:
    source: one of `SOURCES`.
    data_dir: TFDS data directory.
    num_train: number of training examples.
    num_test: number of test examples.
    size: frame height and width in pixels.
    num_frames: frames per video (ignored for images, stored as 1).
    seed: generation seed.
    noise: per-pixel noise amplitude (the difficulty knob).

  Returns:
    A prepared `tfds.core.DatasetBuilder` (call `as_dataset` on it).

  Raises:
    ValueError: unknown source or invalid sizes.
  """
  cls = _builder_class(source)
  config = SyntheticConfig.create(num_train=num_train, num_test=num_test, size=size,
                                  num_frames=num_frames if IS_VIDEO[source] else 1, seed=seed,
                                  noise=noise)
  data_dir = os.fspath(data_dir)
  builder = _open_prepared(cls, data_dir, config)
  if builder is not None:
    return builder
  logging.info("building the embedded dataset %s/%s in %s", cls.name, config.name, data_dir)
  tfds.disable_progress_bar()  # seconds of work: TFDS's bars would fill the training log
  with _build_lock(data_dir, f"{cls.name}-{config.name}"):
    # TFDS skips generation if another process finished it meanwhile.
    builder = cls(data_dir=data_dir, config=config)
    try:
      _prepare(builder)
    except Exception:  # pylint: disable=broad-except
      if _open_prepared(cls, data_dir, config) is None:
        raise  # A genuine failure, not a lost race.
      logging.info("Lost a race to build %s/%s; reusing the winner's.", cls.name, config.name)
  builder = _open_prepared(cls, data_dir, config)
  if builder is None:
    raise RuntimeError(f"{cls.name}/{config.name} is not prepared in {data_dir} after building.")
  return builder


def _open_prepared(cls: type, data_dir: str, config: SyntheticConfig):
  """Returns a builder for a prepared dataset, or None if it is not prepared.

  TFDS reads the dataset info (splits, shards) from disk only if the dataset
  exists when the builder is constructed: a builder constructed just before
  another process finished the dataset reports `is_prepared()` but has no
  splits. Checking the splits on the constructed builder avoids that race.
  """
  builder = cls(data_dir=data_dir, config=config)
  if builder.is_prepared() and set(builder.info.splits.keys()) == set(synthetic.SPLITS):
    return builder
  return None
