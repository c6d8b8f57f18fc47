r"""Prepares a video collection for training: sharded DMVR-format records of one split.

  python -m cover_jax.prepare --format=kinetics \
      --annotations=/raw/k400/annotations/train.csv --video_root=/raw/k400/train \
      --output_dir=/data/k400 --split=train --workers=16
  python -m cover_jax.prepare --format=kinetics \
      --annotations=/raw/k400/annotations/val.csv --video_root=/raw/k400/val \
      --output_dir=/data/k400 --split=validation --workers=16

Formats: `csv` (DMVR's `video_path,start,end,label`), `kinetics` (the official
CSVs), `ssv2` (Something-Something-v2's JSON), `folder` (one folder per class);
see `annotations.py`. docs/data.md "Preparing data" has the command for each of
the paper's datasets.

The dataset directory (the contract with the readers):

  classes.txt                           line i names class i; decided by the first split
                                        prepared, reused (and enforced) by the others
  <split>-<i:05d>-of-<n:05d>.tfrecord   DMVR-format SequenceExamples (see dmvr_format.py)
  prepare_report.json                   settings, per-split counts, every skipped video and why
  <split>_skipped.txt                   the skipped videos again, one per line: path<TAB>reason

Running the same command again resumes: finished shards are kept, the rest are
written (see split_writer.py). Videos that cannot be decoded are skipped and
reported; the job never stops for one bad file.

Exit status: 0 done (possibly with skipped videos); 1 no video could be
decoded; 2 invalid flags or inputs, or a dataset directory they do not fit
(nothing was written); 3 a worker process died (rerun to resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import sys
import time

from absl import flags
from etils import epath

from cover_jax.prepare import annotations, class_list, split_writer, video_records

REPORT_FILE = "prepare_report.json"
SPLITS = ("train", "validation", "test")


class PrepareError(ValueError):
  """Inputs or an existing dataset directory that the job cannot work with."""


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
  """One run of the tool: one split of one dataset (the flags, as values)."""

  format: str
  output_dir: str
  split: str
  annotations: str | None = None
  video_root: str | None = None
  class_list: str | None = None
  settings: video_records.EncodeSettings = video_records.EncodeSettings()
  num_shards: int = 0  # 0: one shard per split_writer.VIDEOS_PER_SHARD videos
  workers: int = 1
  seed: int = 0
  progress: bool = True


@contextlib.contextmanager
def _dataset_lock(output_dir: str):
  """Serialises class-list and report updates of runs on different splits at once.

  Local file systems only; on remote ones (gs://) run one split at a time.
  """
  if "://" in output_dir:
    yield
    return
  state = os.path.join(output_dir, split_writer.STATE_DIR)
  os.makedirs(state, exist_ok=True)
  with open(os.path.join(state, "lock"), "a") as lock_file:
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock_file, fcntl.LOCK_UN)


def _read_report(output_dir: str) -> dict:
  path = epath.Path(output_dir) / REPORT_FILE
  return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {"splits": {}}


def _write_report(output_dir: str, report: dict) -> None:
  path = epath.Path(output_dir) / REPORT_FILE
  temp = path.parent / f".{REPORT_FILE}.tmp-{os.getpid()}"
  temp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
  temp.replace(path)


def _claim_settings(output_dir: str, settings: video_records.EncodeSettings) -> None:
  """Records the dataset's frame rate and size, or checks that this split uses the same.

  Every split of a dataset must share them: a model trained at one frame
  rate and evaluated at another sees different motion for the same stride.
  """
  report = _read_report(output_dir)
  for key, flag in (("fps", "--fps"), ("short_side", "--short_side")):
    wanted = getattr(settings, key) or 0
    if key in report and report[key] != wanted:
      raise PrepareError(
          f"{flag}={wanted} differs from the {report[key]} that {output_dir} was prepared with "
          f"({REPORT_FILE}); every split of a dataset needs the same: use {flag}={report[key]}, "
          "or prepare into a new --output_dir")
    report[key] = wanted
  _write_report(output_dir, report)


def _videos_digest(clips: list[annotations.VideoClip]) -> str:
  """Identifies the listed videos and labels (not where the collection is mounted)."""
  digest = hashlib.sha256()
  for clip in clips:
    digest.update(json.dumps([clip.name, clip.label, clip.start_s, clip.end_s]).encode())
  return digest.hexdigest()[:16]


def _plan(options: PrepareOptions, clips, num_shards: int) -> dict:
  """What decides the split's shards, keyed by the flag that sets each."""
  settings = options.settings
  return {"format": options.format, "videos_listed": len(clips),
          "videos_digest": _videos_digest(clips), "num_shards": num_shards, "seed": options.seed,
          "fps": settings.fps or 0, "short_side": settings.short_side or 0,
          "jpeg_quality": settings.jpeg_quality}


def _split_report(options: PrepareOptions, clips, outcomes, seconds: float) -> dict:
  skipped = [entry for outcome in outcomes for entry in outcome.skipped]
  return {
      "format": options.format, "annotations": options.annotations,
      "video_root": options.video_root, "videos_listed": len(clips),
      "videos_written": sum(outcome.written for outcome in outcomes),
      "videos_skipped": len(skipped), "num_shards": len(outcomes),
      "shards": [outcome.filename for outcome in outcomes],
      "jpeg_quality": options.settings.jpeg_quality, "seed": options.seed,
      "seconds_this_run": round(seconds, 1), "skipped_videos": skipped,
  }


def _write_skipped_list(output_dir: str, split: str, skipped: list[dict]) -> None:
  lines = "".join(f"{entry['path']}\t{entry['reason']}\n" for entry in skipped)
  (epath.Path(output_dir) / f"{split}_skipped.txt").write_text(lines, encoding="utf-8")


def prepare(options: PrepareOptions) -> dict:
  """Prepares (or resumes) one split; returns its entry of the report.

  Raises:
    annotations.AnnotationError, class_list.ClassListError, PrepareError,
    split_writer.ShardError: with a message that says what to fix. Nothing
    is written for bad annotations or class lists.
  """
  start = time.time()
  if options.split not in SPLITS:
    raise PrepareError(f"split {options.split!r}: use one of {list(SPLITS)}")
  clips = annotations.read_annotations(options.format, annotations=options.annotations,
                                       video_root=options.video_root)
  if not clips:
    raise PrepareError(f"no videos listed in {options.annotations or options.video_root}")
  output_dir = options.output_dir
  with _dataset_lock(output_dir):
    names = class_list.resolve(output_dir, [clip.label for clip in clips], options.class_list)
    _claim_settings(output_dir, options.settings)
  num_shards = options.num_shards or split_writer.auto_num_shards(len(clips))
  tasks = split_writer.plan_shards(clips, {name: i for i, name in enumerate(names)},
                                    dataset_dir=output_dir, split=options.split,
                                    num_shards=num_shards, seed=options.seed)
  split_writer.check_or_save_plan(output_dir, options.split, _plan(options, clips, num_shards))
  split_writer.remove_stale_temp_files(output_dir, options.split)
  todo = [t for t in tasks if split_writer.load_outcome(t) is None]  # the rest are finished
  outcomes = split_writer.write_shards(tasks, options.settings, workers=options.workers,
                                        progress=options.progress)
  entry = _split_report(options, clips, outcomes, time.time() - start)
  entry["videos_this_run"] = sum(len(t.items) for t in todo)
  with _dataset_lock(output_dir):
    report = _read_report(output_dir)
    report["num_classes"] = len(names)
    report["splits"][options.split] = entry
    _write_report(output_dir, report)
  _write_skipped_list(output_dir, options.split, entry["skipped_videos"])
  return entry


# ----------------------------------------------------------------------------- command line

def define_flags() -> None:
  """The command line's flags; defined only when this module is run as a program, so
  importing it (tests, benchmarks, other tools) adds no flags to theirs."""
  flags.DEFINE_enum("format", None, annotations.FORMATS,
                    "Input format: csv (video_path,start,end,label), kinetics (official CSV), "
                    "ssv2 (JSON), folder (one folder per class).")
  flags.DEFINE_string("annotations", None,
                      "The CSV/JSON annotation file (not for --format=folder).")
  flags.DEFINE_string("video_root", None,
                      "Folder of the videos (kinetics: searched recursively; ssv2: <id>.webm; "
                      "folder: the folder of class folders; csv: relative video_path's are "
                      "under it).")
  flags.DEFINE_string("output_dir", None, "The dataset directory to write.")
  flags.DEFINE_enum("split", None, SPLITS, "Which split the annotations are.")
  flags.DEFINE_string("class_list", None,
                      "Official class list (SSv2 labels JSON, MiT moments_categories.txt, or one "
                      "name per line); default: the dataset's classes.txt, else sorted labels.")
  flags.DEFINE_float("fps", video_records.DEFAULT_FPS,
                     "Output frame rate (0: keep the source frames).")
  flags.DEFINE_integer("short_side", video_records.DEFAULT_SHORT_SIDE,
                       "Resize the shorter side to this (0: keep the size).")
  flags.DEFINE_integer("jpeg_quality", video_records.DEFAULT_JPEG_QUALITY,
                       "JPEG quality of stored frames, 1-100.")
  flags.DEFINE_integer("num_shards", 0,
                       f"Shard files (0: one per {split_writer.VIDEOS_PER_SHARD} videos).")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes.")
  flags.DEFINE_integer("seed", 0, "Seed of the shuffle that assigns videos to shards.")
  flags.DEFINE_bool("progress", True, "Show a progress bar.")


def flag_errors(values: dict) -> list[str]:
  """Every problem with the flag values ({name: value}), each naming the flag, value and fix."""
  errors = [f"--{name} is missing: {fix}" for name, fix in (
      ("format", f"use one of {', '.join(annotations.FORMATS)}"),
      ("output_dir", "name the dataset directory to write"),
      ("split", f"use one of {', '.join(SPLITS)}")) if values[name] is None]
  fmt, annotation_file, video_root = values["format"], values["annotations"], values["video_root"]
  for name, allowed in (("fps", "a frame rate such as 25, or 0 to keep the source frames"),
                        ("short_side", "a size such as 256, or 0 to keep the frame size"),
                        ("num_shards", "a shard count, or 0 for one per "
                         f"{split_writer.VIDEOS_PER_SHARD} videos")):
    if values[name] < 0:
      errors.append(f"--{name}={values[name]}: must not be negative; use {allowed}")
  if not 1 <= values["jpeg_quality"] <= 100:
    errors.append(f"--jpeg_quality={values['jpeg_quality']}: use 1..100, e.g. --jpeg_quality=90")
  if values["workers"] < 1:
    errors.append(f"--workers={values['workers']}: use at least 1, e.g. "
                  f"--workers={os.cpu_count()}")
  if fmt == "folder" and annotation_file:
    errors.append(f"--annotations={annotation_file}: not used with --format=folder (the "
                  "folder names are the labels); drop it")
  if fmt and fmt != "folder" and not annotation_file:
    errors.append(f"--annotations is missing: --format={fmt} needs the annotation file")
  elif annotation_file and not os.path.isfile(annotation_file):
    errors.append(f"--annotations={annotation_file}: no such file")
  if fmt and fmt != "csv" and not video_root:
    errors.append(f"--video_root is missing: --format={fmt} needs the folder of videos")
  elif video_root and not os.path.isdir(video_root):
    errors.append(f"--video_root={video_root}: no such folder")
  if values["class_list"] and not os.path.isfile(values["class_list"]):
    errors.append(f"--class_list={values['class_list']}: no such file")
  return errors


def _options_from_flags(values: dict) -> PrepareOptions:
  settings = video_records.EncodeSettings(fps=values["fps"] or None,
                                          short_side=values["short_side"] or None,
                                          jpeg_quality=values["jpeg_quality"])
  return PrepareOptions(format=values["format"], output_dir=values["output_dir"],
                        split=values["split"], annotations=values["annotations"],
                        video_root=values["video_root"], class_list=values["class_list"],
                        settings=settings, num_shards=values["num_shards"],
                        workers=values["workers"], seed=values["seed"],
                        progress=values["progress"])


def _summary(output_dir: str, split: str, entry: dict) -> str:
  seconds, videos = entry["seconds_this_run"], entry.get("videos_this_run", 0)
  # Shards finished by an earlier run are not part of this run's rate.
  speed = (f"{videos / max(seconds, 0.1):.1f} videos/s" if videos
           else "every shard was already written: nothing to do")
  lines = [f"{split}: {entry['videos_written']} of {entry['videos_listed']} videos written to "
           f"{entry['num_shards']} shard(s) in {output_dir}; {entry['videos_skipped']} skipped "
           f"({seconds:.1f} s, {speed})"]
  for skipped in entry["skipped_videos"][:5]:
    lines.append(f"  skipped {skipped['path']}: {skipped['reason']}")
  if entry["videos_skipped"] > 5:
    lines.append(f"  ... all {entry['videos_skipped']} are listed in "
                 f"{os.path.join(output_dir, REPORT_FILE)} and {split}_skipped.txt")
  return "\n".join(lines)


def main(argv):
  del argv
  values = flags.FLAGS.flag_values_dict()
  errors = flag_errors(values)
  if errors:
    print("error: invalid flags:\n" + "\n".join(f"  - {e}" for e in errors), file=sys.stderr)
    sys.exit(2)
  options = _options_from_flags(values)
  try:
    entry = prepare(options)
  except (annotations.AnnotationError, class_list.ClassListError, PrepareError,
          split_writer.ShardError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except split_writer.WorkerDiedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  print(_summary(options.output_dir, options.split, entry))
  if entry["videos_written"] == 0:
    print(f"error: none of the {entry['videos_listed']} videos could be decoded; check "
          f"--video_root={options.video_root} (the first reasons are above)", file=sys.stderr)
    sys.exit(1)


