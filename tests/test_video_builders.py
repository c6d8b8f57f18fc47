"""TFDS builders of the video datasets: built offline from a manual_dir, read with tfds.load."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cover_jax.train import loop
from cover_jax.prepare import annotations, class_list, video_builders, video_records
from tests import video_collections
from tests.helpers import load_config

TINY = dict(fps=10.0, short_side=16, jpeg_quality=90)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  return video_collections.write_collection(tmp_path_factory.mktemp("raw"))


def _load(name, config, manual_dir, data_dir, split, workers=1):
  return tfds.load(
      name, split=split, data_dir=str(data_dir), with_info=True,
      builder_kwargs={"config": config, "workers": workers},
      download_and_prepare_kwargs={
          "download_config": tfds.download.DownloadConfig(manual_dir=str(manual_dir))})


def _expected_frames(clip, settings):
  """What prepare.py stores for the clip, decoded: the builders must store the same."""
  jpegs = video_records.encode_video(clip, settings).jpeg_frames
  return np.stack([tf.io.decode_jpeg(jpeg).numpy() for jpeg in jpegs])


def test_kinetics_builds_offline_and_loads_with_the_same_frames_as_prepare(raw, tmp_path):
  config = video_builders.VideoConfig(name="tiny", num_classes=2, **TINY)
  manual_dir = raw / "kinetics"
  ds, info = _load("cover_kinetics", config, manual_dir, tmp_path, "train", workers=2)
  assert info.features["label"].names == ["cartwheeling", "juggling balls"]
  assert list(info.splits) == ["train"]  # no validation CSV in this manual_dir
  examples = {ex["filename"].decode(): ex for ex in tfds.as_numpy(ds)}
  clips = annotations.read_kinetics_csv(str(manual_dir / "train.csv"), str(manual_dir))
  assert set(examples) == {clip.name for clip in clips[:2]}  # the missing video is skipped
  for clip in clips[:2]:
    example = examples[clip.name]
    np.testing.assert_array_equal(example["video"], _expected_frames(clip, config.settings))
    assert info.features["label"].int2str(example["label"]) == clip.label
  whole = examples["videos/yid_full.mp4"]  # names are relative to manual_dir
  assert (whole["start_us"], whole["end_us"]) == (1_000_000, 2_000_000)


def test_a_class_count_that_does_not_match_the_config_is_an_error(raw, tmp_path):
  with pytest.raises(class_list.ClassListError, match="has 2 classes, but cover_kinetics/k400"):
    _load("cover_kinetics", "k400", raw / "kinetics", tmp_path, "train")


def test_moments_in_time_uses_its_official_class_order_and_skips_corrupt_videos(raw, tmp_path):
  manual_dir = tmp_path / "manual"
  shutil.copytree(raw / "folder", manual_dir / "Moments_in_Time_Raw" / "training")
  shutil.copytree(raw / "folder" / "juggling", manual_dir / "Moments_in_Time_Raw" / "validation"
                  / "juggling")
  (manual_dir / "Moments_in_Time_Raw" / "moments_categories.txt").write_text(
      "juggling,0\ncartwheel,1\n")
  config = video_builders.VideoConfig(name="tiny", num_classes=2, **TINY)
  (train, validation), info = _load("cover_moments_in_time", config, manual_dir,
                                    tmp_path / "data", ["train", "validation"])
  assert info.features["label"].names == ["juggling", "cartwheel"]
  labels = {ex["filename"].decode(): ex["label"] for ex in tfds.as_numpy(train)}
  assert labels == {name: 0 if name.startswith("juggling") else 1
                    for name in video_collections.FOLDER_VIDEOS}  # broken.mp4 skipped
  assert info.splits["validation"].num_examples == 2 == len(list(validation))


def test_something_something_v2_reads_its_json_and_label_file(raw, tmp_path):
  manual_dir = tmp_path / "manual"
  shutil.copytree(raw / "ssv2" / "videos", manual_dir / "20bn-something-something-v2")
  (manual_dir / "labels").mkdir()
  for split in ("train", "validation"):
    shutil.copy(raw / "ssv2" / "train.json",
                manual_dir / "labels" / f"something-something-v2-{split}.json")
  shutil.copy(raw / "ssv2" / "labels.json",
              manual_dir / "labels" / "something-something-v2-labels.json")
  config = video_builders.VideoConfig(name="tiny", num_classes=3, **dict(TINY, fps=5.0))
  ds, info = _load("cover_something_something_v2", config, manual_dir, tmp_path / "data",
                   "validation")
  assert info.features["label"].names == list(video_collections.SSV2_LABELS)
  examples = {ex["filename"].decode(): ex for ex in tfds.as_numpy(ds)}
  for video_id, template in video_collections.SSV2_VIDEOS.items():
    example = examples[f"{video_id}.webm"]
    assert example["video"].shape == (3, 16, 24, 3)  # 6 frames at 10 fps -> 5 fps
    assert info.features["label"].int2str(example["label"]) == annotations.ssv2_label(template)


def test_an_empty_manual_dir_gives_the_instructions(tmp_path):
  (tmp_path / "manual").mkdir()
  with pytest.raises(AssertionError, match="something-something-v2-labels.json"):
    _load("cover_something_something_v2", "fps12", tmp_path / "manual", tmp_path / "data",
          "train")


def test_kinetics_prepared_by_tfds_trains_and_evaluates_through_the_tfds_source(
    raw, tmp_path, monkeypatch):
  # The docs/data.md path `--config.datasets.k400.source=tfds --config.datasets.k400.tfds_name=
  # cover_kinetics/<config>`: the builder prepares offline, the trainer reads the prepared
  # dataset by name. A 2-class test config stands in for k400 (400 classes).
  tiny = video_builders.VideoConfig(name="tiny", version="1.0.0", num_classes=2, **TINY)
  # TFDS memoizes a builder's configs by name: add the test config there (undone after).
  monkeypatch.setitem(video_builders.CoverKinetics.builder_configs, "tiny", tiny)
  data_dir = tmp_path / "tfds"
  tfds.builder("cover_kinetics/tiny", data_dir=str(data_dir)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(raw / "kinetics")))

  config = load_config("configs/k400.py", "tiny=true,steps=2", **{
      "data_dir": str(data_dir), "datasets.k400.source": "tfds",
      "datasets.k400.tfds_name": "cover_kinetics/tiny", "datasets.k400.num_classes": 2,
      "datasets.k400.eval_split": "train",  # this manual_dir has no validation CSV
      "datasets.k400.eval_clips": 1, "datasets.k400.eval_crops": 1})
  outcome = loop.train_and_evaluate(config, str(tmp_path / "work"))
  result = outcome.results["k400"]
  prepared = tfds.builder("cover_kinetics/tiny", data_dir=str(data_dir)).info.splits["train"]
  assert result["num_videos"] == prepared.num_examples > 0 and result["skipped_records"] == 0
  assert 0.0 <= result["video_top1"] <= 1.0 and outcome.train_top1.keys() == {"k400"}
