r"""TFDS builders for the paper's video datasets, built offline from raw videos in `manual_dir`.

The same data as `prepare.py` makes, through TFDS instead: the same annotation
readers (`annotations.py`), class lists (`class_list.py`) and decoding
(`video_records.encode_video`: PyAV, constant fps, short-side resize, JPEG), so
a frame is byte for byte the same JPEG either way.

    import tensorflow_datasets as tfds
    import cover_jax.prepare.video_builders  # registers the builders below

    ds = tfds.load("cover_kinetics/k400", split="train", data_dir="/data/tfds",
                   builder_kwargs={"workers": 16},
                   download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                       manual_dir="/raw/k400")})

Builders, their configs, and what `manual_dir` must hold:

- `cover_kinetics` (`k400`, `k600`, `k700`; 25 fps): the official CSVs
  (`train.csv`, `val.csv` or `validate.csv`, optionally a labelled `test.csv`;
  at its top or in `annotations/`) and the videos anywhere below it, named as
  the download scripts name them (see `annotations.read_kinetics_csv`).
- `cover_something_something_v2` (`fps12`):
  `something-something-v2-{labels,train,validation}.json` (at its top or in
  `labels/`) and the `.webm` videos (in `20bn-something-something-v2/` or at
  its top).
- `cover_moments_in_time` (`fps25`): `training/<class>/*.mp4`,
  `validation/<class>/*.mp4` and `moments_categories.txt` (at its top or in
  `Moments_in_Time_Raw/`).

Examples: `video` (uint8 T x H x W x 3, JPEG-encoded frames of varying size),
`label` (ClassLabel, the dataset's fixed class list), `filename`, `start_us`,
`end_us`. Videos that cannot be decoded are skipped and logged (with the
reason); the split's example count says how many made it.

Generation never touches the network (`download_and_prepare` always runs with
`try_download_gcs=False`) and decodes in `workers` processes (a builder
keyword argument; default: all cores).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import ClassVar

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from cover_jax.prepare import annotations, class_list, embedded_builders, video_records
from cover_jax.prepare import workers as workers_lib
from cover_jax.prepare.annotations import VideoClip

_VERSION = tfds.core.Version("1.0.0")
_RELEASE_NOTES = {"1.0.0": "Initial release."}


@dataclasses.dataclass(eq=False, kw_only=True)
class VideoConfig(tfds.core.BuilderConfig):
  """How a dataset's videos become frames, and what it should contain.

  Attributes:
    fps: output frame rate (None: keep the source frames).
    short_side: shorter side in pixels (None: keep the size).
    jpeg_quality: 1-100.
    num_classes: expected number of classes (0: do not check); catches a
      manual_dir holding another Kinetics version's CSVs.
  """

  fps: float | None = video_records.DEFAULT_FPS
  short_side: int | None = video_records.DEFAULT_SHORT_SIDE
  jpeg_quality: int = video_records.DEFAULT_JPEG_QUALITY
  num_classes: int = 0

  @property
  def settings(self) -> video_records.EncodeSettings:
    return video_records.EncodeSettings(self.fps, self.short_side, self.jpeg_quality)


def _config(name: str, description: str, **kwargs) -> VideoConfig:
  return VideoConfig(name=name, version=_VERSION, release_notes=dict(_RELEASE_NOTES),
                     description=description, **kwargs)


def _find(manual_dir: epath.Path, candidates: tuple[str, ...], *, required: bool = True):
  """The first of `candidates` (paths relative to manual_dir) that exists."""
  for candidate in candidates:
    if (manual_dir / candidate).exists():
      return os.fspath(manual_dir / candidate)
  if required:
    raise annotations.AnnotationError(
        f"{manual_dir} has none of {list(candidates)}; see the manual download instructions")
  return None


def _encode(clip: VideoClip, settings: video_records.EncodeSettings):
  """EncodedVideo, or the reason the video was skipped (a worker never raises)."""
  try:
    return video_records.encode_video(clip, settings)
  except Exception as e:  # pylint: disable=broad-except  # one bad file never stops the build
    return video_records.skip_reason(e, clip)


def _encoded_videos(clips: list[VideoClip], settings, workers: int):
  """Yields (index, clip, EncodedVideo or skip reason), in `workers` processes."""
  indexed = list(enumerate(clips))
  if workers <= 1:
    for i, clip in indexed:
      yield i, clip, _encode(clip, settings)
    return
  encode = functools.partial(_encode_indexed, settings=settings)
  for (i, clip), result in workers_lib.map_unordered(encode, indexed, workers=workers,
                                                     preload=__name__):
    yield i, clip, result


def _encode_indexed(indexed: tuple[int, VideoClip], settings):
  return _encode(indexed[1], settings)


class _RawVideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: subclasses say where annotations are (`_read_splits`)."""

  VERSION = _VERSION
  RELEASE_NOTES = dict(_RELEASE_NOTES)
  HOMEPAGE: ClassVar[str] = ""
  DESCRIPTION: ClassVar[str] = ""

  def __init__(self, *, workers: int | None = None, **kwargs):
    """Like any TFDS builder, plus `workers`: decoding processes (default: all cores)."""
    self._workers = workers or os.cpu_count() or 1
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file (TFDS's version needs the `importlib_resources` backport)."""
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    # The class names come from manual_dir, so they are set in _split_generators.
    return embedded_builders.LocalDatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "video": tfds.features.Video(shape=(None, None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(),
            "filename": tfds.features.Text(),
            "start_us": tfds.features.Scalar(np.int64),
            "end_us": tfds.features.Scalar(np.int64),
        }),
        supervised_keys=("video", "label"),
        homepage=self.HOMEPAGE,
    )

  def download_and_prepare(self, *, download_config=None, **kwargs):
    """TFDS's, but never looks for a prebuilt copy on GCS (there is none; runs offline)."""
    download_config = dataclasses.replace(download_config or tfds.download.DownloadConfig(),
                                          try_download_gcs=False)
    super().download_and_prepare(download_config=download_config, **kwargs)

  def _read_splits(self, manual_dir: epath.Path) -> tuple[list[str], dict[str, list[VideoClip]]]:
    """(class names, {split: clips}) from manual_dir."""
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    names, splits = self._read_splits(dl_manager.manual_dir)
    expected = self.builder_config.num_classes
    if expected and len(names) != expected:
      raise class_list.ClassListError(
          f"{dl_manager.manual_dir} has {len(names)} classes, but {self.name}/"
          f"{self.builder_config.name} has {expected}: are these another version's annotations?")
    for split, clips in splits.items():
      class_list.check_labels((clip.label for clip in clips), names, f"{self.name} ({split})")
    self.info.features["label"].names = names
    return {split: self._generate_examples(split, clips) for split, clips in splits.items()}

  def _generate_examples(self, split: str, clips: list[VideoClip]):
    skipped = 0
    for i, clip, video in _encoded_videos(clips, self.builder_config.settings, self._workers):
      if isinstance(video, str):
        skipped += 1
        logging.warning("%s %s: skipped %s: %s", self.name, split, clip.path, video)
        continue
      yield f"{i:08d}:{clip.name}", {"video": video.jpeg_frames, "label": clip.label,
                                     "filename": clip.name, "start_us": video.start_us,
                                     "end_us": video.end_us}
    logging.log(logging.WARNING if skipped else logging.INFO, "%s %s: %d of %d videos skipped",
                self.name, split, skipped, len(clips))


def _has_labels(csv_path: str) -> bool:
  with open(csv_path, encoding="utf-8") as f:
    return "label" in [column.strip() for column in f.readline().split(",")]


class CoverKinetics(_RawVideoBuilder):
  """Kinetics-400/600/700 from the official CSVs and downloaded videos."""

  BUILDER_CONFIGS = [
      _config(f"k{n}", f"Kinetics-{n}, 25 fps, short side 256.", num_classes=n)
      for n in (400, 600, 700)
  ]
  HOMEPAGE = "https://github.com/cvdfoundation/kinetics-dataset"
  DESCRIPTION = "Kinetics human action videos (10 s YouTube clips), one label each."
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put the official CSVs (train.csv, val.csv or validate.csv, and optionally a
  test.csv with labels) in manual_dir or manual_dir/annotations, and the
  videos anywhere below manual_dir, named <youtube_id>_<start:06d>_<end:06d>.mp4
  (as the CVDF mirror and ActivityNet's download script name them) or
  <youtube_id>.mp4 (whole videos, cut to the CSV's window).
  """
  _CSVS = {"train": ("train.csv",), "validation": ("val.csv", "validate.csv"),
           "test": ("test.csv",)}

  def _read_splits(self, manual_dir):
    splits = {}
    for split, names in self._CSVS.items():
      candidates = tuple(f"{folder}{name}" for folder in ("annotations/", "") for name in names)
      csv_path = _find(manual_dir, candidates, required=split == "train")
      if csv_path and _has_labels(csv_path):
        splits[split] = annotations.read_kinetics_csv(csv_path, os.fspath(manual_dir))
      elif csv_path:
        logging.warning("%s has no labels: no %s split", csv_path, split)
    return sorted({clip.label for clip in splits["train"]}), splits


class CoverSomethingSomethingV2(_RawVideoBuilder):
  """Something-Something-v2 from its JSON annotations and .webm videos."""

  BUILDER_CONFIGS = [_config("fps12", "At its native 12 fps, short side 256.", fps=12.0,
                             num_classes=174)]
  HOMEPAGE = "https://www.qualcomm.com/developer/software/something-something-v-2-dataset"
  DESCRIPTION = ("Something-Something-v2: humans doing basic actions with everyday objects; "
                 "the label is the action template. Do not flip horizontally.")
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put something-something-v2-labels.json, something-something-v2-train.json
  and something-something-v2-validation.json in manual_dir or
  manual_dir/labels, and the <id>.webm videos in
  manual_dir/20bn-something-something-v2 (or manual_dir itself).
  """

  def _read_splits(self, manual_dir):
    labels = lambda name: _find(manual_dir, (f"labels/{name}", name))
    videos = _find(manual_dir, ("20bn-something-something-v2",), required=False)
    videos = videos or os.fspath(manual_dir)
    splits = {split: annotations.read_ssv2_json(labels(f"something-something-v2-{split}.json"),
                                                videos)
              for split in ("train", "validation")}
    return class_list.read_official(labels("something-something-v2-labels.json")), splits


class CoverMomentsInTime(_RawVideoBuilder):
  """Moments-in-Time from its class folders."""

  BUILDER_CONFIGS = [_config("fps25", "25 fps, short side 256.", num_classes=339)]
  HOMEPAGE = "http://moments.csail.mit.edu/"
  DESCRIPTION = "Moments in Time: 3 s videos of 339 everyday events, one label each."
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Extract Moments_in_Time_Raw so that manual_dir (or
  manual_dir/Moments_in_Time_Raw) holds training/<class>/*.mp4,
  validation/<class>/*.mp4 and moments_categories.txt.
  """

  def _read_splits(self, manual_dir):
    find = lambda name: _find(manual_dir, (name, f"Moments_in_Time_Raw/{name}"))
    splits = {"train": annotations.read_class_folders(find("training")),
              "validation": annotations.read_class_folders(find("validation"))}
    return class_list.read_official(find("moments_categories.txt")), splits
