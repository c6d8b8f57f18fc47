"""A tiny raw video collection in every input format the preparation tool reads.

Videos are real files written with PyAV (`video_files.write_video`: frame i has
red = 10 i, so a test can tell which source frames a record holds). Layout
under `root`:

    folder/<class>/...                  class-per-folder (Moments-in-Time / UCF style),
                                        with one corrupt file
    clips.csv                           DMVR's `video_path,start,end,label`, paths under folder/
    kinetics/videos/...                 a trimmed clip in a class folder, a whole video, one missing
    kinetics/train.csv                  Kinetics' official CSV
    ssv2/videos/<id>.webm, ssv2/train.json, ssv2/labels.json
"""

from __future__ import annotations

import json
import pathlib

from tests import video_files

FOLDER_VIDEOS = {  # relative path -> frames (all 10 fps, 32x48)
    "cartwheel/a.mp4": 12,
    "cartwheel/sub/b.webm": 10,
    "juggling/c.avi": 14,
    "juggling/d.mp4": 8,
}
FOLDER_CORRUPT = "juggling/broken.mp4"
# Something-Something-v2: official order differs from sorted order on purpose.
SSV2_LABELS = {"Pushing something from left to right": "0",
               "Moving something up": "1",
               "Dropping something into something": "2"}
SSV2_VIDEOS = {"101": "Pushing [something] from left to right",
               "102": "Moving [something] up",
               "103": "Dropping [something] into [something]",
               "104": "Moving [something] up"}


def _write_folder(root: pathlib.Path) -> None:
  for relative, frames in FOLDER_VIDEOS.items():
    (root / relative).parent.mkdir(parents=True, exist_ok=True)
    video_files.write_video(root / relative, num_frames=frames)
  (root / FOLDER_CORRUPT).write_bytes(b"\x00not a video" * 64)
  (root / "juggling" / "notes.txt").write_text("not a video, ignored\n")


def _write_kinetics(root: pathlib.Path) -> None:
  videos = root / "videos"
  (videos / "juggling balls").mkdir(parents=True)
  # Trimmed by the download script: the file is the 1-3 s window.
  video_files.write_video(videos / "juggling balls" / "yid_trim_000001_000003.mp4", num_frames=20)
  # The whole YouTube video (2.4 s); the CSV's window 1-2 s is cut when decoding.
  video_files.write_video(videos / "yid_full.mp4", num_frames=24)
  (root / "train.csv").write_text(
      "label,youtube_id,time_start,time_end,split\n"
      '"juggling balls",yid_trim,1,3,train\n'
      "cartwheeling,yid_full,1.0,2.0,train\n"
      "cartwheeling,yid_missing,5,15,train\n")


def _write_ssv2(root: pathlib.Path) -> None:
  (root / "videos").mkdir(parents=True)
  for video_id in SSV2_VIDEOS:
    video_files.write_video(root / "videos" / f"{video_id}.webm", num_frames=6)
  (root / "train.json").write_text(json.dumps(
      [{"id": video_id, "label": "a concrete caption", "template": template,
        "placeholders": ["x"]} for video_id, template in SSV2_VIDEOS.items()]))
  (root / "labels.json").write_text(json.dumps(SSV2_LABELS))


def write_collection(root: pathlib.Path) -> pathlib.Path:
  """Writes the whole collection under `root` (see the module docstring); returns root."""
  root = pathlib.Path(root)
  _write_folder(root / "folder")
  (root / "clips.csv").write_text(
      "video_path,start,end,label\n"
      "cartwheel/a.mp4,0.2,0.9,cartwheel\n"
      "juggling/c.avi,,,juggling\n"
      f"{FOLDER_CORRUPT},,,juggling\n")
  _write_kinetics(root / "kinetics")
  _write_ssv2(root / "ssv2")
  return root
