"""Tests for the synthetic datasets (cover_jax/prepare/synthetic.py, embedded_builders.py).

The pixel-level checks recover the object from the frames themselves (bright
object vs dim background), so they test what a model would see rather than
the renderer's internal parameters.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import random
import tempfile
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cover_jax.prepare import embedded_builders
from cover_jax.prepare import synthetic

# Background pixels stay below ~75 in every channel and object pixels (even
# the dark half) above ~120 in their brightest channel.
_OBJECT_THRESHOLD = 100
_TINY = dict(num_train=16, num_test=8, size=24, num_frames=8)


# --- Helpers: recover the object from pixels ---------------------------------


def _mask(frames: np.ndarray) -> np.ndarray:
  """Object pixels, (..., H, W) bool."""
  return frames.max(axis=-1) > _OBJECT_THRESHOLD


def _centroids(video: np.ndarray) -> np.ndarray:
  """Per-frame object centroid (x, y) in pixels, (T, 2)."""
  out = []
  for mask in _mask(video):
    ys, xs = np.nonzero(mask)
    assert xs.size > 0, "object not visible"
    out.append((xs.mean(), ys.mean()))
  return np.asarray(out)


def _areas(video: np.ndarray) -> np.ndarray:
  return _mask(video).sum(axis=(1, 2))


def _orientations(video: np.ndarray) -> np.ndarray:
  """Unwrapped per-frame angle of the vector from the dark to the bright half."""
  angles = []
  for frame, mask in zip(video, _mask(video)):
    brightness = frame.max(axis=-1).astype(float)
    bright = mask & (brightness > 0.825 * brightness[mask].max())
    dark = mask & ~bright
    by, bx = np.nonzero(bright)
    dy, dx = np.nonzero(dark)
    angles.append(np.arctan2(by.mean() - dy.mean(), bx.mean() - dx.mean()))
  return np.unwrap(np.asarray(angles))


def _motion(label: int, index: int, num_frames: int = 16, size: int = 40) -> np.ndarray:
  return synthetic.render_motion_video(np.random.default_rng([7, label, index]), label,
                                       num_frames, size)


def _label(name: str) -> int:
  return synthetic.MOTION_CLASSES.index(name)


# --- Determinism ---------------------------------------------------------------


@pytest.mark.parametrize("source", synthetic.SOURCES)
def test_examples_are_pure_functions_of_seed_split_index(source):
  kwargs = dict(num_frames=4, size=24)
  first = dict(synthetic.generate_examples(source, "train", 3, **kwargs))
  again = dict(synthetic.generate_examples(source, "train", 3, **kwargs))
  test = dict(synthetic.generate_examples(source, "test", 3, **kwargs))
  reseeded = dict(synthetic.generate_examples(source, "train", 3, seed=1, **kwargs))
  data_key = "video" if embedded_builders.IS_VIDEO[source] else "image"
  arrays = [ex[data_key] for ex in first.values()]
  assert first.keys() == again.keys()
  for key in first:
    np.testing.assert_array_equal(first[key][data_key], again[key][data_key])
  assert not np.array_equal(arrays[0], arrays[1])
  for a, b, c in zip(arrays, [ex[data_key] for ex in test.values()],
                     [ex[data_key] for ex in reseeded.values()]):
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)


# Fingerprints of the first examples. A prepared dataset is reused as long as
# its config name and VERSION match, so a renderer change that alters pixels
# must bump `embedded_builders._VERSION` (and then update these) -- otherwise stale
# datasets would silently differ from freshly built ones.
_FINGERPRINTS = {
    "synthetic_appearance": "a6c39584217ec4af",
    "synthetic_motion": "0a94ee43e2a940fe",
    "synthetic_images": "c61e7f2607d3a95d",
}


@pytest.mark.parametrize("source", synthetic.SOURCES)
def test_generated_data_is_pinned(source):
  digest = hashlib.sha256()
  for key, example in synthetic.generate_examples(source, "train", 6, num_frames=4, size=24):
    array = example["video"] if embedded_builders.IS_VIDEO[source] else example["image"]
    digest.update(key.encode())
    digest.update(array.tobytes())
    digest.update(bytes([example["label"]]))
  assert digest.hexdigest()[:16] == _FINGERPRINTS[source], (
      "generated data changed: bump embedded_builders._VERSION and update _FINGERPRINTS")
  assert str(embedded_builders.CoverSyntheticMotion.VERSION) == "1.0.0"


@pytest.mark.parametrize("source", synthetic.SOURCES)
def test_noise_is_the_difficulty_knob(source):
  """`noise` scales the per-pixel noise only: the same objects, backgrounds and labels."""
  key = "video" if embedded_builders.IS_VIDEO[source] else "image"
  kwargs = dict(num_frames=4, size=24)
  default = synthetic.render_example(source, "train", 3, **kwargs)
  same = synthetic.render_example(source, "train", 3, noise=synthetic.NOISE_AMPLITUDE, **kwargs)
  clean = synthetic.render_example(source, "train", 3, noise=0, **kwargs)
  noisy = synthetic.render_example(source, "train", 3, noise=64, **kwargs)
  np.testing.assert_array_equal(default[key], same[key])
  assert default["label"] == clean["label"] == noisy["label"]
  spread = [np.abs(x[key].astype(int) - clean[key]).mean() for x in (default, noisy)]
  assert 0 < spread[0] < spread[1]  # more noise, further from the clean frames
  config = embedded_builders.SyntheticConfig.create(num_train=4, num_test=2, size=16,
                                                    num_frames=3, noise=24)
  assert config.name == "s16_f3_n4-2_seed0_noise24"  # the default noise keeps the old names
  with pytest.raises(ValueError, match="noise must be an integer in"):
    embedded_builders.SyntheticConfig.create(num_train=4, num_test=2, size=16, num_frames=3,
                                             noise=-1)


def test_the_catalog_states_the_generators_facts():
  from cover_jax.config import catalog

  assert catalog.EMBEDDED_NOISE == synthetic.NOISE_AMPLITUDE
  for source, classes, is_video, _ in catalog.EMBEDDED.values():
    assert classes == len(synthetic.class_names(source))
    assert is_video == embedded_builders.IS_VIDEO[source]


def test_sources_use_independent_random_streams():
  a = synthetic.example_rng("synthetic_appearance", "train", 0).random(4)
  b = synthetic.example_rng("synthetic_motion", "train", 0).random(4)
  assert not np.array_equal(a, b)


def test_unknown_split_or_source_is_rejected():
  with pytest.raises(ValueError, match="validation"):
    next(synthetic.generate_examples("synthetic_motion", "validation", 1, num_frames=2, size=24))
  with pytest.raises(ValueError, match="kinetics"):
    next(synthetic.generate_examples("kinetics", "train", 1, num_frames=2, size=24))


# --- Shapes, dtypes, labels ------------------------------------------------------


@pytest.mark.parametrize("source", synthetic.SOURCES)
def test_shapes_dtypes_and_balanced_labels(source):
  num_classes = embedded_builders.num_classes(source)
  n = 2 * num_classes + 3
  examples = list(synthetic.generate_examples(source, "train", n, num_frames=5, size=24))
  assert len(examples) == n
  assert len({key for key, _ in examples}) == n
  expected_shape = (5, 24, 24, 3) if embedded_builders.IS_VIDEO[source] else (24, 24, 3)
  data_key = "video" if embedded_builders.IS_VIDEO[source] else "image"
  for _, example in examples:
    assert set(example) == {data_key, "label"}
    assert example[data_key].shape == expected_shape
    assert example[data_key].dtype == np.uint8
    assert 0 <= example["label"] < num_classes
  counts = collections.Counter(example["label"] for _, example in examples)
  assert set(counts) == set(range(num_classes))
  assert max(counts.values()) - min(counts.values()) <= 1


def test_class_lists():
  assert set(synthetic.APPEARANCE_CLASSES) < set(synthetic.IMAGE_CLASSES)
  assert len(synthetic.IMAGE_CLASSES) > len(synthetic.APPEARANCE_CLASSES)
  for names in (synthetic.APPEARANCE_CLASSES, synthetic.MOTION_CLASSES, synthetic.IMAGE_CLASSES):
    assert len(set(names)) == len(names)
  assert synthetic.MOTION_CLASSES == [
      "move left", "move right", "move up", "move down",
      "rotate clockwise", "rotate counter-clockwise", "grow", "shrink"]
  assert embedded_builders.num_classes("synthetic_motion") == 8
  assert embedded_builders.num_classes("synthetic_images") == len(synthetic.IMAGE_CLASSES)


# --- Appearance: the label is the object ----------------------------------------


def _dominant_colour(frames: np.ndarray) -> str:
  """The palette colour closest (cosine) to the mean colour of object pixels."""
  mean = frames[_mask(frames)].astype(float).mean(axis=0)
  scores = {name: np.dot(mean, rgb) / np.linalg.norm(rgb) / np.linalg.norm(mean)
            for name, rgb in synthetic.COLOURS.items()}
  return max(scores, key=scores.get)


@pytest.mark.parametrize("source", ["synthetic_appearance", "synthetic_images"])
def test_object_colour_matches_label(source):
  names = synthetic.class_names(source)
  key = "video" if embedded_builders.IS_VIDEO[source] else "image"
  for _, example in synthetic.generate_examples(source, "test", 2 * len(names), num_frames=4,
                                                 size=32):
    colour = names[example["label"]].split(" ")[0]
    assert _dominant_colour(example[key]) == colour


def test_appearance_objects_move_and_stay_in_frame():
  for label in range(len(synthetic.APPEARANCE_CLASSES)):
    video = synthetic.render_appearance_video(np.random.default_rng(label), label, 16, 40)
    mask = _mask(video)
    assert mask.any(axis=(1, 2)).all()
    # Nothing touches the border: the whole object is always visible.
    assert not mask[:, [0, -1], :].any() and not mask[:, :, [0, -1]].any()
    path = _centroids(video)
    assert np.abs(np.diff(path, axis=0)).sum() > 5  # It moves (pixels travelled).


# --- Motion: the label is in time, not in a frame --------------------------------


@pytest.mark.parametrize("index", range(4))
def test_translation_direction(index):
  for name, axis, sign in [("move left", 0, -1), ("move right", 0, 1),
                           ("move up", 1, -1), ("move down", 1, 1)]:
    path = _centroids(_motion(_label(name), index))
    travel = path[-1] - path[0]
    assert sign * travel[axis] > 0.3 * 40, (name, travel)  # ~40% of the frame.
    assert abs(travel[1 - axis]) < 2, (name, travel)  # Only along its axis.
    assert sign * np.corrcoef(np.arange(16), path[:, axis])[0, 1] > 0.98


@pytest.mark.parametrize("index", range(4))
def test_reversed_video_is_the_paired_class(index):
  left = _centroids(_motion(_label("move left"), index)[::-1])
  assert left[-1, 0] - left[0, 0] > 0.3 * 40  # Reversed "move left" moves right.
  grow = _areas(_motion(_label("grow"), index)[::-1])
  assert grow[-1] < 0.5 * grow[0]  # Reversed "grow" shrinks.
  clockwise = _orientations(_motion(_label("rotate clockwise"), index)[::-1])
  assert clockwise[-1] - clockwise[0] < -np.pi / 2  # Reversed: counter-clockwise.


@pytest.mark.parametrize("index", range(4))
def test_grow_and_shrink_change_area(index):
  grow = _areas(_motion(_label("grow"), index))
  shrink = _areas(_motion(_label("shrink"), index))
  assert grow[-1] > 2.5 * grow[0]  # Radius x2 -> area x4.
  assert shrink[-1] < shrink[0] / 2.5
  assert np.all(np.diff(grow) >= -2) and np.all(np.diff(shrink) <= 2)


@pytest.mark.parametrize("index", range(4))
def test_rotation_direction(index):
  # Image y points down, so a clockwise turn on screen increases atan2(y, x).
  clockwise = _orientations(_motion(_label("rotate clockwise"), index))
  counter = _orientations(_motion(_label("rotate counter-clockwise"), index))
  assert clockwise[-1] - clockwise[0] > 0.6 * np.pi
  assert counter[-1] - counter[0] < -0.6 * np.pi
  # Translations do not rotate.
  still = _orientations(_motion(_label("move up"), index))
  assert np.ptp(still) < 0.5


def _best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> float:
  """Accuracy of the best 1-D threshold classifier separating a from b."""
  values = np.concatenate([a, b])
  is_a = np.concatenate([np.ones_like(a, bool), np.zeros_like(b, bool)])
  accuracies = [np.mean((values <= t) == is_a) for t in np.unique(values)]
  return max(max(accuracies), 1 - min(accuracies))


@pytest.mark.parametrize("pair, feature", [
    (("move left", "move right"), lambda v: _centroids(v)[:, 0]),
    (("move up", "move down"), lambda v: _centroids(v)[:, 1]),
    (("grow", "shrink"), lambda v: _areas(v).astype(float)),
])
def test_single_frames_do_not_give_the_motion_away(pair, feature):
  # Pool frames taken at any time: their position/size distribution is the
  # same for both classes of a pair, so no threshold separates them ...
  pooled = [np.concatenate([feature(_motion(_label(name), i, 8, 32)) for i in range(60)])
            for name in pair]
  assert _best_threshold_accuracy(*pooled) < 0.62
  # ... while the same feature over time separates them perfectly.
  trends = [np.array([np.polyfit(np.arange(8), feature(_motion(_label(name), i, 8, 32)), 1)[0]
                      for i in range(20)]) for name in pair]
  assert trends[0].max() < 0 < trends[1].min() or trends[1].max() < 0 < trends[0].min()


# --- TFDS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def built(data_dir):
  return {source: embedded_builders.build(source, data_dir, **_TINY) for source in embedded_builders.SOURCES}


@pytest.mark.parametrize("source", embedded_builders.SOURCES)
def test_tfds_dataset_matches_generator(built, source):
  builder = built[source]
  assert builder.is_prepared()
  assert builder.info.features["label"].names == synthetic.class_names(source)
  assert builder.info.splits["train"].num_examples == _TINY["num_train"]
  is_video = embedded_builders.IS_VIDEO[source]
  key = "video" if is_video else "image"
  assert builder.info.supervised_keys == (key, "label")
  frames = _TINY["num_frames"] if is_video else 1
  expected = [ex for _, ex in synthetic.generate_examples(
      source, "test", _TINY["num_test"], num_frames=frames, size=_TINY["size"])]
  decoded = list(builder.as_dataset(split="test").as_numpy_iterator())
  assert len(decoded) == _TINY["num_test"]
  shape = (_TINY["num_frames"],) * is_video + (_TINY["size"], _TINY["size"], 3)
  unmatched = list(range(len(expected)))
  for example in decoded:  # TFDS shuffles by key hash: match by content.
    assert example[key].shape == shape and example[key].dtype == np.uint8
    match = [i for i in unmatched if np.array_equal(expected[i][key], example[key])]
    assert len(match) == 1, "decoded example differs from the generator's (PNG is lossless)"
    assert expected[match[0]]["label"] == example["label"]
    unmatched.remove(match[0])


def test_tfds_config_names_keep_variants_apart(built, data_dir):
  names = {source: builder.builder_config.name for source, builder in built.items()}
  assert names["synthetic_motion"] == "s24_f8_n16-8_seed0"
  assert names["synthetic_images"] == "s24_f1_n16-8_seed0"
  other = embedded_builders.build("synthetic_motion", data_dir, num_train=4, num_test=2, size=16,
                         num_frames=3, seed=5)
  assert other.builder_config.name == "s16_f3_n4-2_seed5"
  assert other.data_path != built["synthetic_motion"].data_path
  video = next(iter(other.as_dataset(split="train")))["video"]
  assert tuple(video.shape) == (3, 16, 16, 3)
  assert built["synthetic_motion"].is_prepared()


def test_build_again_does_not_regenerate(built, data_dir, monkeypatch):
  del built  # Only needs the datasets to exist.

  def fail(*args, **kwargs):
    raise AssertionError("regenerated an existing dataset")

  monkeypatch.setattr(synthetic, "generate_examples", fail)
  for source in embedded_builders.SOURCES:
    path = embedded_builders.build(source, data_dir, **_TINY).data_path
    info = os.path.join(path, "dataset_info.json")
    mtime = os.stat(info).st_mtime_ns
    again = embedded_builders.build(source, data_dir, **_TINY)
    assert os.stat(info).st_mtime_ns == mtime
    assert again.info.splits["test"].num_examples == _TINY["num_test"]


def test_unknown_source_is_a_helpful_error(tmp_path):
  with pytest.raises(ValueError, match="kinetics400") as error:
    embedded_builders.build("kinetics400", str(tmp_path), **_TINY)
  for source in embedded_builders.SOURCES:
    assert source in str(error.value)
  with pytest.raises(ValueError, match="kinetics400"):
    embedded_builders.num_classes("kinetics400")


def test_build_failure_is_raised_and_leaves_nothing_prepared(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("renderer exploded")
    yield  # pylint: disable=unreachable

  monkeypatch.setattr(synthetic, "generate_examples", broken)
  with pytest.raises(RuntimeError, match="renderer exploded"):
    embedded_builders.build("synthetic_images", str(tmp_path), **_TINY)
  monkeypatch.undo()
  builder = embedded_builders.build("synthetic_images", str(tmp_path), **_TINY)
  assert builder.info.splits["train"].num_examples == _TINY["num_train"]


def test_build_survives_losing_a_race(tmp_path, monkeypatch):
  """Another process finishes the same dataset while this one generates it.

  Simulated in-process (without the file lock, as on a remote file system):
  the first generator call runs a complete rival build before yielding, so
  this build's final rename finds the dataset already there.
  """
  data_dir = str(tmp_path)
  monkeypatch.setattr(embedded_builders, "_build_lock", lambda *args: contextlib.nullcontext())
  real_generate = synthetic.generate_examples
  rival = []

  def racing_generate(*args, **kwargs):
    if not rival:
      rival.append("started")  # The rival's own generator calls must not race.
      rival.append(embedded_builders.build("synthetic_motion", data_dir, **_TINY))
    yield from real_generate(*args, **kwargs)

  errors = []
  real_prepare = embedded_builders._prepare  # pylint: disable=protected-access

  def recording_prepare(builder):
    try:
      real_prepare(builder)
    except Exception as e:
      errors.append(e)
      raise

  monkeypatch.setattr(synthetic, "generate_examples", racing_generate)
  monkeypatch.setattr(embedded_builders, "_prepare", recording_prepare)
  builder = embedded_builders.build("synthetic_motion", data_dir, **_TINY)
  assert len(rival) == 2 and rival[1].is_prepared(), "the rival build did not run"
  assert len(errors) == 1 and isinstance(errors[0], FileExistsError), errors  # Lost the rename.
  assert builder.info.splits["train"].num_examples == _TINY["num_train"]
  assert sum(1 for _ in builder.as_dataset(split="train")) == _TINY["num_train"]
  leftovers = [p for p in os.listdir(os.path.dirname(builder.data_path)) if "incomplete" in p]
  assert not leftovers



def test_build_lock_serialises_builders(tmp_path):
  events = []

  def contender():
    with embedded_builders._build_lock(str(tmp_path), "ds"):  # pylint: disable=protected-access
      events.append("contender")

  with embedded_builders._build_lock(str(tmp_path), "ds"):  # pylint: disable=protected-access
    thread = threading.Thread(target=contender)
    thread.start()
    thread.join(timeout=0.3)
    assert thread.is_alive(), "a second builder got the lock while it was held"
    events.append("holder done")
  thread.join(timeout=5)
  assert events == ["holder done", "contender"]


def test_temp_dir_names_do_not_follow_the_callers_random_seed():
  # TFDS names its temp dir with `random`; identically seeded processes must
  # still get different names, and the caller's random stream is untouched.
  random.seed(0)
  expected_next = random.random()
  random.seed(0)
  with embedded_builders._fresh_python_random():  # pylint: disable=protected-access
    inside = random.random()
  assert inside != expected_next
  assert random.random() == expected_next


def test_build_never_returns_a_builder_without_splits(built, data_dir, monkeypatch):
  """A builder constructed just before another process finished the dataset.

  TFDS reads the dataset info only if the data exists at construction time;
  such a builder then reports `is_prepared()` but has no splits. Simulated by
  skipping the first info read.
  """
  del built  # The dataset exists; the first builder just does not know it.
  real_read = tfds.core.DatasetInfo.read_from_directory
  calls = []

  def read_once_skipped(self, *args, **kwargs):
    calls.append(1)
    if len(calls) > 1:
      return real_read(self, *args, **kwargs)

  monkeypatch.setattr(tfds.core.DatasetInfo, "read_from_directory", read_once_skipped)
  builder = embedded_builders.build("synthetic_motion", data_dir, **_TINY)
  assert len(calls) > 1
  assert builder.info.splits["test"].num_examples == _TINY["num_test"]


def test_build_leaves_no_temp_dirs(tmp_path, monkeypatch):
  # Stock TFDS makes an (unremoved) /tmp/tmp*tfds dir for every builder
  # constructed before its dataset exists.
  made = []
  real_mkdtemp = tempfile.mkdtemp

  def spy(*args, **kwargs):
    path = real_mkdtemp(*args, **kwargs)
    made.append(path)
    return path

  monkeypatch.setattr(tempfile, "mkdtemp", spy)
  embedded_builders.build("synthetic_images", str(tmp_path), **_TINY)
  assert not [path for path in made if os.path.exists(path)]
