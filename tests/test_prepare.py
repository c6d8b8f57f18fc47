"""The preparation tool end to end: real video files in, DMVR-format records out."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cover_jax.prepare import class_list, cli as prepare_cli, dmvr_format, split_writer, video_decode, video_records
from tests import video_collections
from tests.helpers import REPO

SETTINGS = video_records.EncodeSettings(fps=10, short_side=16, jpeg_quality=90)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  return video_collections.write_collection(tmp_path_factory.mktemp("raw"))


def _prepare(output_dir, fmt, split="train", **kwargs):
  options = dict(format=fmt, output_dir=str(output_dir), split=split, settings=SETTINGS,
                 progress=False)
  options.update(kwargs)
  return prepare_cli.prepare(prepare_cli.PrepareOptions(**options))


def _records(dataset_dir, split="train"):
  """Every record of a split: {filename: clip as numpy values}."""
  files = sorted(str(p) for p in dataset_dir.glob(f"{split}-*-of-*.tfrecord"))
  clips = {}
  for clip in dmvr_format.read_clips(files).as_numpy_iterator():
    clips[clip["filename"].decode()] = clip
  return clips


def _assert_frames(clip, video_root, expected):
  """Checks that a record holds frames `expected` (indices) of its source file.

  Compared with the source decoded at its own rate (mean red, which encodes
  the frame number in these videos), up to JPEG error. Not
  `video_files.source_index`: lossy codecs shift a frame's colour by up to
  half a step, and at low bit rates even repeat one.
  """
  path = os.path.join(video_root, clip["filename"].decode())
  source = video_decode.decode_video(path, short_side=SETTINGS.short_side).frames_thwc
  assert clip["frames"].shape == (len(expected),) + source.shape[1:]
  red = lambda frames: frames[..., 0].reshape(len(frames), -1).mean(axis=1)
  np.testing.assert_allclose(red(clip["frames"]), red(source[expected]), atol=3)


def test_class_folders_become_records_with_frames_labels_and_a_report(raw, tmp_path):
  entry = _prepare(tmp_path, "folder", video_root=str(raw / "folder"), num_shards=3)
  names = (tmp_path / "classes.txt").read_text().splitlines()
  assert names == ["cartwheel", "juggling"]
  clips = _records(tmp_path)
  assert set(clips) == set(video_collections.FOLDER_VIDEOS)
  for name, frames in video_collections.FOLDER_VIDEOS.items():
    clip = clips[name]
    assert clip["frames"].shape == (frames, 16, 24, 3)  # 32x48 -> short side 16
    _assert_frames(clip, raw / "folder", list(range(frames)))
    assert names[clip["label"]] == clip["label_text"].decode() == name.split("/")[0]
    assert (clip["start_us"], clip["end_us"]) == (0, frames * 100_000)
  report = json.loads((tmp_path / prepare_cli.REPORT_FILE).read_text())
  assert (report["fps"], report["short_side"], report["num_classes"]) == (10, 16, 2)
  split = report["splits"]["train"]
  assert (split["videos_listed"], split["videos_written"], split["videos_skipped"]) == (5, 4, 1)
  assert split == entry
  [skipped] = split["skipped_videos"]
  assert skipped["path"].endswith(video_collections.FOLDER_CORRUPT)
  assert "cannot decode" in skipped["reason"] and skipped["label"] == "juggling"
  assert (tmp_path / "train_skipped.txt").read_text().startswith(skipped["path"] + "\t")
  assert sorted(p.name for p in tmp_path.glob("train-*")) == split["shards"] == [
      f"train-0000{i}-of-00003.tfrecord" for i in range(3)]


def test_shards_hold_every_video_once_spread_by_a_fixed_shuffle():
  clips = [video_records.VideoClip(path=f"{i}.mp4", label=str(i % 2), name=f"{i}.mp4")
           for i in range(10)]
  plan = lambda seed: split_writer.plan_shards(clips, {"0": 0, "1": 1}, dataset_dir="d",
                                                split="train", num_shards=3, seed=seed)
  shards = [[clip.name for clip, _ in task.items] for task in plan(0)]
  assert sorted(sum(shards, [])) == sorted(clip.name for clip in clips)
  assert [len(shard) for shard in shards] == [4, 3, 3]
  assert shards == [[clip.name for clip, _ in task.items] for task in plan(0)]
  assert shards != [[clip.name for clip, _ in task.items] for task in plan(1)]
  assert sorted(sum(shards, [])) != sum(shards, [])  # shuffled, not in listing order


def test_csv_windows_are_cut_and_timestamped(raw, tmp_path):
  _prepare(tmp_path, "csv", annotations=str(raw / "clips.csv"), video_root=str(raw / "folder"))
  clips = _records(tmp_path)
  assert set(clips) == {"cartwheel/a.mp4", "juggling/c.avi"}  # the corrupt one is skipped
  window = clips["cartwheel/a.mp4"]
  _assert_frames(window, raw / "folder", list(range(2, 9)))  # [0.2, 0.9) s at 10 fps
  assert (window["start_us"], window["end_us"]) == (200_000, 900_000)


def test_kinetics_trimmed_clips_whole_videos_and_missing_files(raw, tmp_path):
  entry = _prepare(tmp_path, "kinetics", annotations=str(raw / "kinetics" / "train.csv"),
                   video_root=str(raw / "kinetics" / "videos"))
  assert class_list.read_classes_txt(str(tmp_path)) == ["cartwheeling", "juggling balls"]
  clips = _records(tmp_path)
  videos = raw / "kinetics" / "videos"
  trimmed = clips["juggling balls/yid_trim_000001_000003.mp4"]
  _assert_frames(trimmed, videos, list(range(20)))
  whole = clips["yid_full.mp4"]
  _assert_frames(whole, videos, list(range(10, 20)))
  assert (trimmed["label"], whole["label"]) == (1, 0)
  assert (whole["start_us"], whole["end_us"]) == (1_000_000, 2_000_000)
  [missing] = entry["skipped_videos"]
  assert missing["path"].endswith("yid_missing_000005_000015.mp4")
  assert missing["reason"] == "no such file"


def test_ssv2_uses_the_official_class_order_and_resamples(raw, tmp_path):
  _prepare(tmp_path, "ssv2", annotations=str(raw / "ssv2" / "train.json"),
           video_root=str(raw / "ssv2" / "videos"), class_list=str(raw / "ssv2" / "labels.json"),
           settings=video_records.EncodeSettings(fps=5, short_side=16))
  official = list(video_collections.SSV2_LABELS)
  assert class_list.read_classes_txt(str(tmp_path)) == official
  clips = _records(tmp_path)
  for video_id, template in video_collections.SSV2_VIDEOS.items():
    clip = clips[f"{video_id}.webm"]
    assert official[clip["label"]] == template.replace("[", "").replace("]", "")
    _assert_frames(clip, raw / "ssv2" / "videos", [0, 2, 4])  # 6 frames at 10 fps -> 5 fps


def test_later_splits_reuse_the_class_list_and_refuse_unknown_labels(raw, tmp_path):
  _prepare(tmp_path, "folder", video_root=str(raw / "folder"))
  only_juggling = tmp_path / "validation.csv"
  only_juggling.write_text("video_path,start,end,label\njuggling/d.mp4,,,juggling\n")
  _prepare(tmp_path, "csv", "validation", annotations=str(only_juggling),
           video_root=str(raw / "folder"))
  [clip] = _records(tmp_path, "validation").values()
  assert clip["label"] == 1  # its index in the train split's list, not 0
  unknown = tmp_path / "test.csv"
  unknown.write_text("video_path,start,end,label\njuggling/d.mp4,,,juggling\n"
                     "cartwheel/a.mp4,,,backflip\n")
  with pytest.raises(class_list.ClassListError, match="'backflip'"):
    _prepare(tmp_path, "csv", "test", annotations=str(unknown), video_root=str(raw / "folder"))
  assert not list(tmp_path.glob("test-*"))
  report = json.loads((tmp_path / prepare_cli.REPORT_FILE).read_text())
  assert sorted(report["splits"]) == ["train", "validation"]


def test_a_rerun_skips_finished_shards_and_rewrites_the_rest_identically(raw, tmp_path,
                                                                         monkeypatch):
  kwargs = dict(video_root=str(raw / "folder"), num_shards=3)
  first = _prepare(tmp_path, "folder", **kwargs)
  shards = [tmp_path / name for name in first["shards"]]
  contents = [shard.read_bytes() for shard in shards]
  kept = os.stat(shards[0])
  state = tmp_path / split_writer.STATE_DIR
  # A killed run: shard 1 never finished, shard 2 lacks its outcome, a temp file is left.
  shards[1].unlink()
  (state / f"{shards[2].name}.json").unlink()
  (state / f"{shards[1].name}.tmp-12345").write_bytes(b"half a shard")
  encoded = []
  original = video_records.clip_record
  monkeypatch.setattr(video_records, "clip_record",
                      lambda clip, *a: encoded.append(clip.name) or original(clip, *a))
  again = _prepare(tmp_path, "folder", **kwargs)
  tasks = split_writer.plan_shards(
      prepare_cli.annotations.read_class_folders(kwargs["video_root"]),
      {"cartwheel": 0, "juggling": 1}, dataset_dir=str(tmp_path), split="train", num_shards=3,
      seed=0)
  assert sorted(encoded) == sorted(c.name for task in tasks[1:] for c, _ in task.items)
  assert (os.stat(shards[0]).st_ino, os.stat(shards[0]).st_mtime_ns) == (kept.st_ino,
                                                                         kept.st_mtime_ns)
  assert [shard.read_bytes() for shard in shards] == contents
  assert not list(state.glob("*.tmp-*"))
  per_run = ("seconds_this_run", "videos_this_run")
  assert {k: v for k, v in again.items() if k not in per_run} == {
      k: v for k, v in first.items() if k not in per_run}
  assert again["videos_this_run"] == len(encoded) < first["videos_this_run"]


def test_a_rerun_with_other_settings_is_refused(raw, tmp_path):
  _prepare(tmp_path, "folder", video_root=str(raw / "folder"), num_shards=2)
  with pytest.raises(split_writer.ShardError, match=r"num_shards: 2 before, 3 now"):
    _prepare(tmp_path, "folder", video_root=str(raw / "folder"), num_shards=3)
  with pytest.raises(prepare_cli.PrepareError, match=r"--fps=12 differs from the 10"):
    _prepare(tmp_path, "csv", "validation", annotations=str(raw / "clips.csv"),
             video_root=str(raw / "folder"), settings=video_records.EncodeSettings(fps=12))


def test_flag_errors_name_the_flag_the_value_and_the_fix(tmp_path):
  values = dict(format="csv", output_dir=str(tmp_path), split="train", annotations=None,
                video_root=str(tmp_path / "nowhere"), class_list=None, fps=-1.0,
                short_side=256, num_shards=0, jpeg_quality=0, workers=0)
  assert prepare_cli.flag_errors(values) == [
      "--fps=-1.0: must not be negative; use a frame rate such as 25, or 0 to keep the source "
      "frames",
      "--jpeg_quality=0: use 1..100, e.g. --jpeg_quality=90",
      f"--workers=0: use at least 1, e.g. --workers={os.cpu_count()}",
      "--annotations is missing: --format=csv needs the annotation file",
      f"--video_root={tmp_path / 'nowhere'}: no such folder"]
  (tmp_path / "a.csv").write_text("")
  folder = dict(values, format="folder", annotations=str(tmp_path / "a.csv"),
                video_root=str(tmp_path), fps=25.0, jpeg_quality=90, workers=2)
  assert prepare_cli.flag_errors(folder) == [
      f"--annotations={tmp_path / 'a.csv'}: not used with --format=folder (the folder names "
      "are the labels); drop it"]
  missing = dict(folder, format=None, split=None)
  assert prepare_cli.flag_errors(missing) == [
      "--format is missing: use one of csv, kinetics, ssv2, folder",
      "--split is missing: use one of train, validation, test"]


def test_the_command_line_with_two_workers(raw, tmp_path):
  out = tmp_path / "ds"
  command = [sys.executable, "-m", "cover_jax.prepare", "--format=folder",
             f"--video_root={raw / 'folder'}", f"--output_dir={out}", "--split=train",
             "--fps=10", "--short_side=16", "--num_shards=2", "--workers=2"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "train: 4 of 5 videos written to 2 shard(s)" in result.stdout
  assert "broken.mp4: cannot decode" in result.stdout
  clips = _records(out)
  assert set(clips) == set(video_collections.FOLDER_VIDEOS)
  for name, frames in video_collections.FOLDER_VIDEOS.items():
    _assert_frames(clips[name], raw / "folder", list(range(frames)))
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr
  assert "every shard was already written: nothing to do" in again.stdout
  # No worker starts this time: the command's own process prints no TensorFlow notices.
  assert "oneDNN" not in again.stderr and "InitializeLog" not in again.stderr, again.stderr
