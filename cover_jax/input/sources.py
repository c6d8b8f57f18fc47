"""Where a configured dataset's examples come from, as encoded frames and a label.

Every source yields, per example, `{'encoded': string (F,), 'label': int64,
'name': string}`: the example's F frames still encoded (JPEG, or PNG for the
embedded sets) and a name for messages. Frames stay encoded through caching and
shuffling; the pipeline decodes only the frames of the clip it picks
(pipeline.py), which is most of the input cost. Images are F=1 videos.

Sources (`config.datasets.<name>.source`):
  synthetic_*    the embedded TFDS builders (embedded_builders.py), built on first use
  tfds           any prepared TFDS dataset (`tfds_name`) in config.data_dir,
                 e.g. 'cover_kinetics/k400' (video_builders.py) or 'imagenet2012'
                 (manual download); never downloads at run time
  dmvr           DMVR-format SequenceExample records (dmvr_format.py): our
                 prepare tool's, or DMVR's own generator's
  image_folder   `<path>/<split>/<class>/<image>` (or `<path>/<class>/<image>`)
  image_records  tf.train.Example records: image/encoded, image/class/label

`read(split, shard_index, num_shards)` gives the raw stream of one
process (`parse` turns a raw element into the common form inside the fallible
map, so unparseable records are skipped and counted like other bad input);
`num_examples(split, ...)` how many records that stream holds.
"""

from __future__ import annotations

import json
import os

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from cover_jax.prepare import class_list, dmvr_format, embedded_builders, image_index, synthetic

RECORD_SOURCES = ("dmvr", "image_records")
SOURCES = tuple(embedded_builders.SOURCES) + ("tfds", "dmvr", "image_folder", "image_records")
_LABEL_CHECK_RECORDS = 256  # records per split whose label text is checked at start-up


class DatasetError(ValueError):
  """A dataset that cannot be read (nothing there, not prepared, inconsistent labels)."""


def _fail(name: str, what: str, check: str) -> DatasetError:
  return DatasetError(f"dataset {name!r}: {what}. Check: {check}")


class Source:
  """One dataset's examples; subclasses say where they are and how to parse them."""

  is_video = True
  jpeg_only = True  # frames are JPEG (tf.io.decode_jpeg), else any image format
  generated_here = False  # an embedded set this code generated (its records are known good)

  def __init__(self, name: str, cfg):
    self.name, self.cfg = name, cfg
    self.class_names: tuple[str, ...] = ()

  def describe(self) -> str:
    return f"{self.cfg.source} at {self.cfg.path or self.cfg.get('tfds_name', '')}"

  def read(self, split: str, shard_index: int, num_shards: int, *,
           train: bool = False) -> tf.data.Dataset:
    """The raw records of one process's share (`train`: a share need not be exact)."""
    raise NotImplementedError

  def parse(self, raw) -> dict:
    raise NotImplementedError

  def num_examples(self, split: str, shard_index: int = 0, num_shards: int = 1) -> int:
    raise NotImplementedError

  @property
  def prepared(self) -> dict | None:
    """How the stored frames were made from video files: {fps, short_side, jpeg_quality}
    (None values: kept as in the source), or None when unknown or not videos. Saved with
    checkpoints, so that predict decodes a video as this dataset's videos were."""
    return None


def _share(total: int, shard_index: int, num_shards: int) -> int:
  """Records of `total` that `Dataset.shard(num_shards, shard_index)` keeps."""
  return len(range(shard_index, total, num_shards))


class _RecordFiles(Source):
  """Sharded TFRecord files `path/file_pattern`; a process reads every P-th record."""

  def files(self, split: str) -> list[str]:
    pattern = os.path.join(self.cfg.path, self.cfg.file_pattern.format(split=split))
    return sorted(tf.io.gfile.glob(pattern))

  def read(self, split, shard_index, num_shards, *, train=False):
    files = self.files(split)
    if train and num_shards > 1 and len(files) >= num_shards:
      # Training: each process reads only its files (a pod must not read the
      # whole dataset on every host).
      files = files[shard_index::num_shards]
      num_shards = 1
    # Otherwise record-level sharding: exact per-process counts (equal eval
    # batches), every process reads the bytes of all files. Files are read in
    # parallel, interleaved deterministically.
    ds = tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8) or None)
    return ds.shard(num_shards, shard_index) if num_shards > 1 else ds

  def num_examples(self, split, shard_index=0, num_shards=1):
    total = self._counted(split)
    return _share(total, shard_index, num_shards)

  def _counted(self, split: str) -> int:
    if not hasattr(self, "_counts"):
      self._counts = {}
    if split not in self._counts:
      self._counts[split] = self._report_count(split)
      if self._counts[split] is None:
        files = self.files(split)
        self._counts[split] = int(tf.data.TFRecordDataset(files).reduce(
            tf.constant(0, tf.int64), lambda n, _: n + 1)) if files else 0
    return self._counts[split]

  def _report(self) -> dict | None:
    """The prepare tool's prepare_report.json beside the records, if any."""
    path = os.path.join(self.cfg.path, "prepare_report.json")
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path) as f:
      return json.load(f)

  def _report_count(self, split: str) -> int | None:
    """The prepare tool's count of written records (saves a pass over the files)."""
    entry = (self._report() or {}).get("splits", {}).get(split)
    return None if entry is None else int(entry["videos_written"])


def _named_classes(path: str, num_classes: int) -> tuple[str, ...]:
  """classes.txt beside the data, else placeholder names '0'..'C-1'."""
  names = class_list.read_classes_txt(path) if path else None
  return tuple(names) if names is not None else tuple(str(i) for i in range(num_classes))


class DmvrRecords(_RecordFiles):
  """DMVR-format SequenceExamples; classes.txt beside them when present."""

  def __init__(self, name, cfg):
    super().__init__(name, cfg)
    self.has_class_list = tf.io.gfile.exists(os.path.join(cfg.path, class_list.CLASSES_FILE))
    self.class_names = _named_classes(cfg.path, cfg.num_classes)

  def parse(self, raw):
    clip = dmvr_format.parse_clip(raw)
    return {"encoded": clip["jpeg_frames"], "label": clip["label"], "name": clip["filename"]}

  @property
  def prepared(self):
    """From the prepare tool's report; None for records made by other tools (no report)."""
    report = self._report()
    if not report or "fps" not in report:
      return None
    qualities = {s.get("jpeg_quality") for s in report.get("splits", {}).values()} - {None}
    return {"fps": report["fps"] or None, "short_side": report["short_side"] or None,
            "jpeg_quality": qualities.pop() if len(qualities) == 1 else None}

  def check_label_texts(self, split: str) -> None:
    """ClassListError if records' clip/label/text disagree with classes.txt (no silent remap)."""
    if not self.has_class_list or not self.files(split):
      return
    ds = tf.data.TFRecordDataset(self.files(split)[:1]).take(_LABEL_CHECK_RECORDS)
    for clip in ds.map(dmvr_format.parse_clip).as_numpy_iterator():
      text, index = clip["label_text"].decode("utf-8"), int(clip["label"])
      if text and 0 <= index < len(self.class_names) and self.class_names[index] != text:
        raise class_list.ClassListError(
            f"dataset {self.name!r}: {self.files(split)[0]} has a record of "
            f"{clip['filename'].decode()!r} labelled {index} = {text!r}, but line {index + 1} "
            f"of {os.path.join(self.cfg.path, class_list.CLASSES_FILE)} is "
            f"{self.class_names[index]!r}. The records were made with another class list: "
            "restore the classes.txt they were prepared with, or prepare them again")


class ImageRecords(_RecordFiles):
  """tf.train.Example images (ImageNet TFRecord layout)."""

  is_video = False

  def __init__(self, name, cfg):
    super().__init__(name, cfg)
    self.class_names = _named_classes(cfg.path, cfg.num_classes)

  def parse(self, raw):
    example = tf.io.parse_single_example(raw, {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        "image/filename": tf.io.FixedLenFeature([], tf.string, default_value="")})
    return {"encoded": example["image/encoded"][None],
            "label": example["image/class/label"] + self.cfg.label_offset,
            "name": example["image/filename"]}


class ImageFolder(Source):
  """`<path>/<split>/<class>/<image>`; classes: classes.txt, else the sorted folder names."""

  is_video = False
  jpeg_only = False

  def __init__(self, name, cfg):
    super().__init__(name, cfg)
    self._listed = {}
    saved = class_list.read_classes_txt(cfg.path) if cfg.path else None
    self.class_names = tuple(saved) if saved is not None else tuple(
        self._class_folders(cfg.train_split))

  def split_root(self, split: str) -> str:
    root = os.path.join(self.cfg.path, split)
    return root if tf.io.gfile.isdir(root) else self.cfg.path

  def _class_folders(self, split: str) -> list[str]:
    return image_index.class_folders(self.split_root(split))

  def listing(self, split: str) -> tuple[list[str], list[int]]:
    """Image paths and labels, in a fixed order; folders not in the class list get -1.

    From `<root>/image_index.txt` where one was written (prepare/image_index.py),
    else by listing the folders; both give the same order.
    """
    if split not in self._listed:
      root, index = self.split_root(split), {n: i for i, n in enumerate(self.class_names)}
      images = image_index.read_index(root)
      if images is None:
        logging.info("dataset %s: listing %s (write an index once to skip this: "
                     "python -m cover_jax.prepare.image_index --path=...)", self.name, root)
        images = image_index.list_images(root)
      paths = [os.path.join(root, image) for image in images]
      labels = [index.get(image.split("/", 1)[0], -1) for image in images]
      self._listed[split] = (paths, labels)
    return self._listed[split]

  def read(self, split, shard_index, num_shards, *, train=False):
    paths, labels = self.listing(split)
    ds = tf.data.Dataset.from_tensor_slices({"path": tf.constant(paths, tf.string),
                                             "label": tf.constant(labels, tf.int64)})
    return ds.shard(num_shards, shard_index) if num_shards > 1 else ds

  def parse(self, raw):
    return {"encoded": tf.io.read_file(raw["path"])[None], "label": raw["label"],
            "name": raw["path"]}

  def num_examples(self, split, shard_index=0, num_shards=1):
    return _share(len(self.listing(split)[0]), shard_index, num_shards)


class TfdsDataset(Source):
  """A prepared TFDS dataset (embedded synthetic, or any by name); frames left encoded."""

  jpeg_only = False

  def __init__(self, name, cfg, builder: tfds.core.DatasetBuilder):
    super().__init__(name, cfg)
    self.builder = builder
    features = builder.info.features
    self.key = "video" if "video" in features else "image"
    self.is_video = self.key == "video"
    self.class_names = tuple(features["label"].names)

  def describe(self) -> str:
    return f"TFDS {self.builder.info.full_name} in {self.builder.data_dir}"

  def _split(self, split, shard_index, num_shards) -> str:
    return tfds.split_for_jax_process(split, process_index=shard_index,
                                      process_count=num_shards, drop_remainder=False)

  def read(self, split, shard_index, num_shards, *, train=False):
    # No TFDS auto-cache: the pipeline caches where the config says (`cache`),
    # and a cache read partially (the start-up probe) only warns and is dropped.
    return self.builder.as_dataset(split=self._split(split, shard_index, num_shards),
                                   shuffle_files=False,
                                   read_config=tfds.ReadConfig(try_autocache=False),
                                   decoders={self.key: tfds.decode.SkipDecoding()})

  @property
  def prepared(self):
    """The video builders' (video_builders.VideoConfig) settings; None for other datasets."""
    config = self.builder.builder_config
    if not self.is_video or not hasattr(config, "jpeg_quality"):
      return None
    return {"fps": config.fps, "short_side": config.short_side,
            "jpeg_quality": config.jpeg_quality}

  def parse(self, raw):
    encoded = raw[self.key]
    return {"encoded": encoded if self.is_video else encoded[None], "label": raw["label"],
            "name": tf.strings.as_string(raw["label"])}

  def num_examples(self, split, shard_index=0, num_shards=1):
    if split not in self.builder.info.splits:
      return 0
    return self.builder.info.splits[self._split(split, shard_index, num_shards)].num_examples


def _named_tfds(name: str, cfg, data_dir: str) -> TfdsDataset:
  from cover_jax.prepare import video_builders  # noqa: F401  (importing registers the builders)

  if not cfg.tfds_name:
    raise _fail(name, "source 'tfds' needs a dataset name",
                f"--config.datasets.{name}.tfds_name=cover_kinetics/k400 (or imagenet2012)")
  try:
    builder = tfds.builder(cfg.tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _fail(name, f"TFDS knows no dataset {cfg.tfds_name!r} ({e})",
                f"config.datasets.{name}.tfds_name") from None
  if not tf.io.gfile.exists(os.path.join(builder.data_dir, "dataset_info.json")):
    raise _fail(name, f"TFDS dataset {cfg.tfds_name!r} is not prepared in {data_dir} "
                "(it is never downloaded at run time)",
                f"config.data_dir; prepare it once with `tfds build {cfg.tfds_name} "
                f"--data_dir={data_dir} --manual_dir=<raw files>` (docs/data.md: Preparing data)")
  return TfdsDataset(name, cfg, builder)


def open_source(name: str, cfg, data_dir: str) -> Source:
  """The configured dataset's source, opened and checked (DatasetError if unusable)."""
  if cfg.source in embedded_builders.SOURCES:
    syn = cfg.synthetic
    # `noise` is absent from configs saved before it existed: the data they had.
    builder = embedded_builders.build(cfg.source, data_dir, num_train=syn.num_train,
                             num_test=syn.num_test, size=syn.size, num_frames=syn.num_frames,
                             seed=syn.seed, noise=syn.get("noise", synthetic.NOISE_AMPLITUDE))
    source = TfdsDataset(name, cfg, builder)
    source.generated_here = True
  elif cfg.source == "tfds":
    source = _named_tfds(name, cfg, data_dir)
  else:
    kinds = {"dmvr": DmvrRecords, "image_folder": ImageFolder, "image_records": ImageRecords}
    if cfg.source not in kinds:
      raise _fail(name, f"unknown source {cfg.source!r}", f"choose one of {list(SOURCES)}")
    if not cfg.path or not tf.io.gfile.isdir(cfg.path):
      raise _fail(name, f"path {cfg.path!r} is not a directory",
                  f"--config.datasets.{name}.path, or the data= argument of the config file")
    source = kinds[cfg.source](name, cfg)
  _check_not_empty(source)
  if isinstance(source, DmvrRecords):
    for split in filter(None, (cfg.train_split, cfg.eval_split)):
      source.check_label_texts(split)
  logging.info("dataset %s: %s, %d classes, %d train / %s eval examples", name,
               source.describe(), len(source.class_names), source.num_examples(cfg.train_split),
               source.num_examples(cfg.eval_split) if cfg.eval_split else "no")
  return source


def _check_not_empty(source: Source) -> None:
  cfg = source.cfg
  for field, split in (("train_split", cfg.train_split), ("eval_split", cfg.eval_split)):
    if split and source.num_examples(split) == 0:
      where = (os.path.join(cfg.path, cfg.file_pattern.format(split=split))
               if cfg.source in RECORD_SOURCES else source.describe())
      raise _fail(source.name, f"split {split!r} has no examples ({where})",
                  f"config.datasets.{source.name}.path, .file_pattern and .{field}; prepared "
                  "records are named <split>-NNNNN-of-NNNNN.tfrecord (python -m "
                  "cover_jax.prepare)")
  # (The embedded sets' class counts are checked with the config: config_validation.py.)
  if cfg.source not in embedded_builders.SOURCES and len(source.class_names) != cfg.num_classes:
    raise _fail(source.name, f"the class list has {len(source.class_names)} classes but "
                f"num_classes = {cfg.num_classes}",
                f"--config.datasets.{source.name}.num_classes={len(source.class_names)}, "
                "or the classes.txt beside the data")
