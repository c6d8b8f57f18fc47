"""Reading the annotations of video collections into one list of labelled clips.

Each reader turns one input format into `VideoClip`s (a file to decode, an
optional time window, a class name), which the preparation tool
(`prepare.py`) and the TFDS builders (`video_builders.py`) both consume:

- `read_clip_csv`: DMVR's generator format, a CSV with the header
  `video_path,start,end,label` (seconds; empty start/end: the whole file).
- `read_kinetics_csv`: Kinetics' official CSVs (`label,youtube_id,time_start,
  time_end,split`) and a folder of downloaded videos. The download scripts save
  each 10 s window as `<youtube_id>_<start:06d>_<end:06d>.mp4` (ActivityNet's
  crawler, the CVDF mirror), flat or in per-class folders; some tools keep the
  whole YouTube video as `<youtube_id>.mp4`. Both are found anywhere below the
  video root; a whole video is trimmed to the window when decoded.
- `read_ssv2_json`: Something-Something-v2's JSON (`id`, `template`); the label
  is the template with its brackets removed, which is how the official class
  list (`something-something-v2-labels.json`) names the classes.
- `read_class_folders`: one folder per class (Moments-in-Time, UCF-101, HMDB).

A video that is listed but missing on disk is still returned (with the path it
should have): decoding it fails with "no such file", so the preparation job
skips it and lists it in its report like any other bad video.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterable

# Containers FFmpeg reads that video datasets ship in.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".flv", ".3gp",
                    ".mpg", ".mpeg")
FORMATS = ("csv", "kinetics", "ssv2", "folder")


class AnnotationError(ValueError):
  """Annotations that cannot be read; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class VideoClip:
  """One labelled video, or a time window of one, to decode.

  Attributes:
    path: the video file.
    label: the class name (matched against the dataset's class list).
    name: what the records store as `video/filename`: `path` relative to the
      video root, so records do not depend on where the collection was mounted.
    start_s: window start in seconds; None: from the first frame.
    end_s: window end in seconds; None: to the last frame.
  """

  path: str
  label: str
  name: str
  start_s: float | None = None
  end_s: float | None = None


def _clip(path: str, label: str, root: str | None, start_s=None, end_s=None) -> VideoClip:
  name = os.path.relpath(path, root) if root else path
  if name.startswith(os.pardir):  # outside the root: keep the path as given
    name = path
  return VideoClip(path=path, label=label, name=name, start_s=start_s, end_s=end_s)


def _read_csv_rows(csv_path: str, required: Iterable[str], what: str) -> list[dict[str, str]]:
  """CSV rows as dicts; AnnotationError if the file or a required column is missing."""
  if not os.path.isfile(csv_path):
    raise AnnotationError(f"{csv_path}: no such annotation file")
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f, skipinitialspace=True)
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in required if name not in header]
    if missing:
      raise AnnotationError(
          f"{csv_path}: missing column(s) {missing} in the header {header}; {what} needs a "
          f"header line with {list(required)}")
    return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _seconds(value: str, csv_path: str, line: int, column: str) -> float | None:
  if value == "":
    return None
  try:
    return float(value)
  except ValueError:
    raise AnnotationError(f"{csv_path}:{line}: column {column!r} is {value!r}, not a number "
                          "of seconds") from None


def _label(value: str, source: str) -> str:
  if not value:
    raise AnnotationError(f"{source}: empty label; every video needs a class name")
  return value


def read_clip_csv(csv_path: str, video_root: str | None = None) -> list[VideoClip]:
  """DMVR's generator CSV (`video_path,start,end,label`).

  Args:
    csv_path: the CSV file (with a header line).
    video_root: relative `video_path`s are taken relative to this folder;
      None: relative to the current directory, as DMVR's generator does.
  """
  rows = _read_csv_rows(csv_path, ("video_path", "start", "end", "label"), "the clip CSV")
  clips = []
  for line, row in enumerate(rows, start=2):
    path = row["video_path"]
    if video_root and not os.path.isabs(path):
      path = os.path.join(video_root, path)
    clips.append(_clip(path, _label(row["label"], f"{csv_path}:{line}"), video_root,
                       _seconds(row["start"], csv_path, line, "start"),
                       _seconds(row["end"], csv_path, line, "end")))
  return clips


def list_videos(root: str) -> list[str]:
  """Every video file below `root` (by extension), in sorted walk order."""
  if not os.path.isdir(root):
    raise AnnotationError(f"{root}: no such video folder")
  paths = []
  for folder, dirs, files in os.walk(root, followlinks=True):
    dirs.sort()
    paths.extend(os.path.join(folder, file) for file in sorted(files)
                 if os.path.splitext(file)[1].lower() in VIDEO_EXTENSIONS)
  return paths


def index_videos(video_root: str) -> dict[str, str]:
  """Every video file below `video_root`, by file name without extension.

  When a name occurs twice, the first in sorted walk order wins, every time.
  """
  index: dict[str, str] = {}
  for path in list_videos(video_root):
    index.setdefault(os.path.splitext(os.path.basename(path))[0], path)
  return index


def kinetics_clip_name(youtube_id: str, start_s: float, end_s: float) -> str:
  """The download scripts' name of a trimmed clip, e.g. `abc_000010_000020`."""
  return f"{youtube_id}_{int(start_s):06d}_{int(end_s):06d}"


def read_kinetics_csv(csv_path: str, video_root: str) -> list[VideoClip]:
  """Kinetics' official CSV (`label,youtube_id,time_start,time_end[,split]`).

  Each row is looked up below `video_root` as a trimmed clip
  `<youtube_id>_<start:06d>_<end:06d>.*` (decoded whole), else as the whole
  video `<youtube_id>.*` (decoded from time_start to time_end). A row found as
  neither gets the trimmed name's path `.mp4` under `video_root`, and fails to
  decode as a missing file.
  """
  rows = _read_csv_rows(csv_path, ("label", "youtube_id", "time_start", "time_end"),
                        "a Kinetics CSV (the test CSV without labels cannot be used)")
  index = index_videos(video_root)
  clips = []
  for line, row in enumerate(rows, start=2):
    label = _label(row["label"], f"{csv_path}:{line}")
    start = _seconds(row["time_start"], csv_path, line, "time_start")
    end = _seconds(row["time_end"], csv_path, line, "time_end")
    if start is None or end is None:
      raise AnnotationError(f"{csv_path}:{line}: empty time_start/time_end")
    trimmed = kinetics_clip_name(row["youtube_id"], start, end)
    if trimmed in index:
      clips.append(_clip(index[trimmed], label, video_root))
    elif row["youtube_id"] in index:
      clips.append(_clip(index[row["youtube_id"]], label, video_root, start, end))
    else:
      clips.append(_clip(os.path.join(video_root, trimmed + ".mp4"), label, video_root))
  return clips


def ssv2_label(template: str) -> str:
  """'Putting [something] into [something]' -> 'Putting something into something'."""
  return template.replace("[", "").replace("]", "")


def read_ssv2_json(json_path: str, video_root: str, extension: str = ".webm") -> list[VideoClip]:
  """Something-Something-v2 annotations (a JSON list of {'id', 'template', ...}).

  Videos are `<video_root>/<id>.webm`. The test JSON has no templates (its
  labels were never part of it) and is refused.
  """
  if not os.path.isfile(json_path):
    raise AnnotationError(f"{json_path}: no such annotation file")
  with open(json_path, encoding="utf-8") as f:
    try:
      entries = json.load(f)
    except json.JSONDecodeError as e:
      raise AnnotationError(f"{json_path}: not valid JSON ({e})") from None
  if not isinstance(entries, list):
    raise AnnotationError(f"{json_path}: expected a JSON list of videos, as "
                          f"something-something-v2-train.json; got {type(entries).__name__}")
  clips = []
  for i, entry in enumerate(entries):
    if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
      raise AnnotationError(
          f"{json_path}: entry {i} ({str(entry)[:80]}) has no 'id' and 'template'; only the "
          "train and validation JSONs carry labels")
    path = os.path.join(video_root, f"{entry['id']}{extension}")
    clips.append(_clip(path, _label(ssv2_label(entry["template"]), f"{json_path} entry {i}"),
                       video_root))
  return clips


def read_class_folders(root: str) -> list[VideoClip]:
  """`root/<class name>/**/<video>`: one folder per class, videos at any depth in it."""
  if not os.path.isdir(root):
    raise AnnotationError(f"{root}: no such video folder")
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  if not classes:
    raise AnnotationError(f"{root}: no class folders; expected {root}/<class name>/<video>")
  clips = []
  for label in classes:
    clips.extend(_clip(path, label, root) for path in list_videos(os.path.join(root, label)))
  return clips


def read_annotations(fmt: str, *, annotations: str | None, video_root: str | None
                     ) -> list[VideoClip]:
  """The clips of one split in any supported format (see the module docstring).

  Args:
    fmt: one of FORMATS.
    annotations: the CSV or JSON file (not used by 'folder').
    video_root: where the videos are ('folder': the folder of class folders).
  """
  if fmt not in FORMATS:
    raise AnnotationError(f"unknown format {fmt!r}; use one of {list(FORMATS)}")
  if fmt == "folder":
    if not video_root:
      raise AnnotationError("format 'folder' needs the folder of class folders as video root")
    return read_class_folders(video_root)
  if not annotations:
    raise AnnotationError(f"format {fmt!r} needs an annotation file")
  if fmt == "csv":
    return read_clip_csv(annotations, video_root)
  if not video_root:
    raise AnnotationError(f"format {fmt!r} needs the folder of videos as video root")
  if fmt == "kinetics":
    return read_kinetics_csv(annotations, video_root)
  return read_ssv2_json(annotations, video_root)
