"""Annotation readers (CSV, Kinetics, SSv2, class folders) and fixed class lists."""

import json
import os

import pytest

from cover_jax.prepare import annotations, class_list
from cover_jax.prepare.annotations import AnnotationError
from cover_jax.prepare.class_list import ClassListError
from tests import video_collections


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  return video_collections.write_collection(tmp_path_factory.mktemp("raw"))


def test_class_folders_label_every_video_by_its_folder(raw):
  clips = annotations.read_class_folders(str(raw / "folder"))
  names = {clip.name: clip.label for clip in clips}
  assert names == {"cartwheel/a.mp4": "cartwheel", "cartwheel/sub/b.webm": "cartwheel",
                   "juggling/broken.mp4": "juggling", "juggling/c.avi": "juggling",
                   "juggling/d.mp4": "juggling"}  # notes.txt is not a video
  assert all(clip.start_s is None and clip.end_s is None for clip in clips)
  assert clips[0].path == str(raw / "folder" / clips[0].name)


def test_clip_csv_keeps_windows_and_joins_the_video_root(raw):
  clips = annotations.read_clip_csv(str(raw / "clips.csv"), str(raw / "folder"))
  assert [(c.name, c.label, c.start_s, c.end_s) for c in clips] == [
      ("cartwheel/a.mp4", "cartwheel", 0.2, 0.9), ("juggling/c.avi", "juggling", None, None),
      (video_collections.FOLDER_CORRUPT, "juggling", None, None)]
  assert clips[0].path == str(raw / "folder" / "cartwheel" / "a.mp4")


def test_clip_csv_without_the_header_names_the_missing_columns(tmp_path):
  bad = tmp_path / "bad.csv"
  bad.write_text("path,label\nx.mp4,a\n")
  missing = r"missing column\(s\) \['video_path', 'start', 'end'\]"
  with pytest.raises(AnnotationError, match=missing):
    annotations.read_clip_csv(str(bad))
  bad.write_text("video_path,start,end,label\nx.mp4,zero,1,a\n")
  with pytest.raises(AnnotationError, match=r"bad.csv:2: column 'start' is 'zero'"):
    annotations.read_clip_csv(str(bad))


def test_kinetics_finds_trimmed_clips_and_whole_videos_anywhere_below_the_root(raw):
  root = str(raw / "kinetics" / "videos")
  clips = annotations.read_kinetics_csv(str(raw / "kinetics" / "train.csv"), root)
  trimmed, whole, missing = clips
  assert (trimmed.name, trimmed.label) == ("juggling balls/yid_trim_000001_000003.mp4",
                                           "juggling balls")
  assert (trimmed.start_s, trimmed.end_s) == (None, None)  # the file is the window
  assert (whole.name, whole.start_s, whole.end_s) == ("yid_full.mp4", 1.0, 2.0)
  assert missing.path == os.path.join(root, "yid_missing_000005_000015.mp4")
  assert annotations.kinetics_clip_name("abc", 84.0, 94.0) == "abc_000084_000094"


def test_kinetics_csv_without_labels_is_refused(tmp_path, raw):
  test_csv = tmp_path / "test.csv"
  test_csv.write_text("youtube_id,time_start,time_end,split\nabc,0,10,test\n")
  with pytest.raises(AnnotationError, match=r"missing column\(s\) \['label'\]"):
    annotations.read_kinetics_csv(str(test_csv), str(raw / "kinetics" / "videos"))


def test_ssv2_labels_are_templates_without_brackets(raw):
  clips = annotations.read_ssv2_json(str(raw / "ssv2" / "train.json"), str(raw / "ssv2" / "videos"))
  assert [clip.name for clip in clips] == ["101.webm", "102.webm", "103.webm", "104.webm"]
  assert clips[2].label == "Dropping something into something"
  assert annotations.ssv2_label("Putting [something] on [something]") == (
      "Putting something on something")


def test_ssv2_test_json_without_templates_is_refused(tmp_path):
  test_json = tmp_path / "test.json"
  test_json.write_text(json.dumps([{"id": "1"}]))
  with pytest.raises(AnnotationError, match="only the train and validation JSONs carry labels"):
    annotations.read_ssv2_json(str(test_json), str(tmp_path))


def test_read_annotations_needs_the_inputs_of_its_format(raw):
  with pytest.raises(AnnotationError, match="unknown format 'mp4'"):
    annotations.read_annotations("mp4", annotations=None, video_root=None)
  with pytest.raises(AnnotationError, match="'kinetics' needs the folder of videos"):
    annotations.read_annotations("kinetics", annotations=str(raw / "kinetics" / "train.csv"),
                                 video_root=None)
  assert len(annotations.read_annotations("folder", annotations=None,
                                          video_root=str(raw / "folder"))) == 5


@pytest.mark.parametrize("file_name, content, expected", [
    ("labels.json", json.dumps({"b": "1", "a": "0", "c": "2"}), ["a", "b", "c"]),
    ("list.json", json.dumps(["z", "y"]), ["z", "y"]),
    ("moments_categories.txt", "zooming,1\nabseiling,0\n", ["abseiling", "zooming"]),
    ("classes.txt", "zebra\nant\n\n", ["zebra", "ant"]),
])
def test_official_class_lists_keep_their_order(tmp_path, file_name, content, expected):
  (tmp_path / file_name).write_text(content)
  assert class_list.read_official(str(tmp_path / file_name)) == expected


@pytest.mark.parametrize("file_name, content, error", [
    ("labels.json", json.dumps({"a": "0", "b": "0"}), "index 0; indices must be 0..1"),
    ("labels.json", json.dumps({"a": "x"}), "expected {class name: index}"),
    ("classes.txt", "a\n\nb\n", "line 2 is blank"),
    ("classes.txt", "a\nb\na\n", "'a' is listed twice"),
])
def test_broken_class_lists_are_errors(tmp_path, file_name, content, error):
  (tmp_path / file_name).write_text(content)
  with pytest.raises(ClassListError, match=error):
    class_list.read_official(str(tmp_path / file_name))


def test_the_first_split_fixes_the_class_list_and_later_splits_reuse_it(tmp_path):
  dataset = str(tmp_path / "ds")
  assert class_list.resolve(dataset, ["b", "a", "c", "a"]) == ["a", "b", "c"]
  assert (tmp_path / "ds" / "classes.txt").read_text() == "a\nb\nc\n"
  # A split with fewer classes gets the saved list, not sorted(set(its labels)).
  assert class_list.resolve(dataset, ["c"]) == ["a", "b", "c"]
  with pytest.raises(ClassListError, match=r"1 label\(s\) are not in the class list .*'d'"):
    class_list.resolve(dataset, ["a", "d"])
  assert (tmp_path / "ds" / "classes.txt").read_text() == "a\nb\nc\n"


def test_an_official_list_is_used_and_must_agree_with_a_saved_one(tmp_path):
  official = tmp_path / "labels.json"
  official.write_text(json.dumps({"b": 0, "a": 1}))
  dataset = str(tmp_path / "ds")
  assert class_list.resolve(dataset, ["a"], str(official)) == ["b", "a"]
  assert class_list.resolve(dataset, ["a", "b"], str(official)) == ["b", "a"]
  other = tmp_path / "other.json"
  other.write_text(json.dumps({"a": 0, "b": 1}))
  with pytest.raises(ClassListError, match="does not match the class list already saved"):
    class_list.resolve(dataset, ["a"], str(other))
  with pytest.raises(ClassListError, match="not in the class list"):
    class_list.resolve(str(tmp_path / "new"), ["a", "zebra"], str(official))
