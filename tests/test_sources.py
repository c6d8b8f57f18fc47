"""Dataset sources: DMVR records, image folders, image records, TFDS by name; bad input."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from cover_jax.config import defaults
from cover_jax.prepare import class_list, image_index
from cover_jax.evaluation import dataset as eval_data
from cover_jax.input import pipeline, sources
from tests import data_files



def _specs(datasets: dict, data_dir: str = "") -> dict:
  config = defaults.base_config()
  config.data_dir = data_dir
  for name, cfg in datasets.items():
    config.datasets[name] = cfg
  return pipeline.prepare_datasets(config)


def _train(spec, n, **kw):
  ds = pipeline.train_dataset(spec, global_seed=0, **kw)
  return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def _assert_labels_match_pixels(batch):
  for video, label in zip(batch["video"], batch["label"]):
    assert data_files.label_of(video) == label


def _video_cfg(path, **kw):
  fields = dict(source="dmvr", path=str(path), num_classes=3, num_frames=4, stride=1,
                crop_size=16, batch_size=4, eval_batch_size=2, eval_split="test",
                shuffle_buffer=8)
  fields.update(kw)
  return defaults.dataset_config(**fields)


def test_dmvr_records_train_and_eval(tmp_path):
  data_files.write_dmvr(tmp_path, "train", [0, 1, 2, 1, 0, 2], num_classes=3)
  data_files.write_dmvr(tmp_path, "test", [2, 0, 1], num_classes=3)
  spec = _specs({"clips": _video_cfg(tmp_path, eval_clips=2, eval_crops=3)})["clips"]
  assert spec.class_names == ("class0", "class1", "class2") and spec.num_test_examples == 3
  for batch in _train(spec, 3):
    assert batch["video"].shape == (4, 4, 16, 16, 3)
    _assert_labels_match_pixels(batch)
  ds, num_batches = eval_data.eval_dataset(spec)
  batches = list(ds.as_numpy_iterator())
  assert num_batches == len(batches) == 2
  assert batches[0]["video"].shape == (2, 6, 4, 16, 16, 3)  # 2 videos x (2 clips x 3 crops)
  assert [int(m) for b in batches for m in b["mask"]] == [1, 1, 1, 0]


def test_image_folder_is_one_frame_videos_with_sorted_folder_classes(tmp_path):
  data_files.write_image_folder(tmp_path, "train", {"dog": 3, "cat": 2, "emu": 3})
  data_files.write_image_folder(tmp_path, "validation", {"dog": 1, "cat": 1, "emu": 1})
  cfg = defaults.dataset_config(source="image_folder", path=str(tmp_path), num_classes=3,
                                       num_frames=1, crop_size=16, batch_size=4,
                                       eval_batch_size=3, eval_split="validation")
  spec = _specs({"pics": cfg})["pics"]
  assert spec.class_names == ("cat", "dog", "emu") and not spec.is_video
  batch = _train(spec, 1)[0]
  assert batch["video"].shape == (4, 1, 16, 16, 3)
  _assert_labels_match_pixels(batch)
  (evaluated,) = eval_data.eval_dataset(spec)[0].as_numpy_iterator()
  assert sorted(evaluated["label"].tolist()) == [0, 1, 2]


def test_image_index_gives_the_listing_order_and_replaces_the_listing(tmp_path):
  data_files.write_image_folder(tmp_path, "train", {"dog": 3, "cat": 2, "emu": 1})
  (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
  cfg = defaults.dataset_config(source="image_folder", path=str(tmp_path), num_classes=3,
                                       num_frames=1, eval_split="")
  listed = sources.ImageFolder("pics", cfg).listing("train")
  assert [p.split("train/")[1] for p in listed[0]] == [
      "cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg", "dog/2.jpg", "emu/0.jpg"]
  assert listed[1] == [0, 0, 1, 1, 1, 2]

  result = subprocess.run([sys.executable, "-m", "cover_jax.prepare.image_index",
                           f"--path={tmp_path}", "--split=train", "--workers=3"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "6 images in 3 class folders" in result.stdout
  assert sources.ImageFolder("pics", cfg).listing("train") == listed
  # The index is what is read: an image added after it is not listed.
  dog = tmp_path / "train" / "dog"
  (dog / "3.jpg").write_bytes((dog / "0.jpg").read_bytes())
  assert sources.ImageFolder("pics", cfg).listing("train") == listed
  image_index.write_index(str(tmp_path / "train"))
  assert len(sources.ImageFolder("pics", cfg).listing("train")[0]) == 7


def test_image_index_tool_names_a_path_without_class_folders(tmp_path):
  result = subprocess.run([sys.executable, "-m", "cover_jax.prepare.image_index",
                           f"--path={tmp_path}"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "has no class folders" in result.stderr


def test_image_records_with_label_offset(tmp_path):
  # TF-slim ImageNet records number classes from 1.
  records = [data_files.image_example(label, offset=-1) for label in (0, 1, 2, 1)]
  for split in ("train", "validation"):
    data_files.write_records(tmp_path / f"{split}-00000-of-00001", records)
  cfg = defaults.dataset_config(source="image_records", path=str(tmp_path),
                                       num_classes=3, num_frames=1, crop_size=16, batch_size=4,
                                       eval_split="validation", eval_batch_size=4,
                                       label_offset=-1)
  spec = _specs({"recs": cfg})["recs"]
  batch = _train(spec, 1)[0]
  assert sorted(batch["label"].tolist()) == [0, 1, 1, 2]
  _assert_labels_match_pixels(batch)


class TinyTestImages(tfds.core.GeneratorBasedBuilder):
  """A registered TFDS dataset, read by name as `source='tfds'` reads imagenet2012."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(20, 28, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=["a", "b"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(6), "validation": self._generate_examples(2)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": data_files.frames(i % 2, 1)[0], "label": i % 2}


def test_tfds_dataset_by_name_never_downloads(tmp_path):
  cfg = defaults.dataset_config(source="tfds", tfds_name="tiny_test_images", num_classes=2,
                                       num_frames=1, crop_size=16, batch_size=4,
                                       eval_batch_size=2, eval_split="validation")
  with pytest.raises(sources.DatasetError, match=r"'pics'.*not prepared.*tfds build"):
    _specs({"pics": cfg}, str(tmp_path))
  tfds.builder("tiny_test_images", data_dir=str(tmp_path)).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  spec = _specs({"pics": cfg}, str(tmp_path))["pics"]
  assert spec.class_names == ("a", "b") and spec.num_test_examples == 2
  _assert_labels_match_pixels(_train(spec, 1)[0])


# ----------------------------------------------------------------------------- bad input


def _bad_records():
  good_jpegs = tf.io.encode_jpeg(data_files.frames(1, 1)[0]).numpy()
  return [
      data_files.dmvr_record(1, jpegs=[good_jpegs, data_files.CORRUPT_JPEG] * 3, name="corrupt"),
      data_files.dmvr_record(2, jpegs=[], name="empty"),
      data_files.dmvr_record(7, text="", name="label7"),  # outside the 3 classes
  ]


@pytest.mark.parametrize("bad", [0, 1, 2], ids=["corrupt_jpeg", "zero_frames", "label_outside"])
def test_each_kind_of_bad_record_is_skipped_and_counted(tmp_path, bad):
  # No shuffling (buffer 1); 5 good records, then the bad one at positions 5, 11, ...
  data_files.write_dmvr(tmp_path, "train", [0, 1, 2, 0, 1], num_classes=3, shards=1,
                        extra=[_bad_records()[bad]])
  data_files.write_dmvr(tmp_path, "test", [0], num_classes=3, shards=1)
  spec = _specs({"d": _video_cfg(tmp_path, batch_size=5, shuffle_buffer=1)})["d"]
  batches = pipeline.train_dataset(spec, global_seed=0).as_numpy_iterator()
  counter = pipeline.SkipCounter("d", batches, first_position=0)
  seen = [next(counter) for _ in range(3)]
  assert counter.skipped == 2 and counter.next_position == 17  # 5 and 11 seen as gaps
  assert all("index" not in b and sorted(b["label"]) == [0, 0, 1, 1, 2] for b in seen)


def test_restart_at_the_recorded_stream_position_is_exact_despite_skips(tmp_path):
  # A skipped record moves the stream one record past batches x batch size:
  # restarting from the batch count would repeat one example, from the position not.
  data_files.write_dmvr(tmp_path, "train", [0, 1, 2, 0, 1, 2, 0], num_classes=3, shards=1,
                        extra=[_bad_records()[0]])
  data_files.write_dmvr(tmp_path, "test", [0], num_classes=3, shards=1)
  spec = _specs({"d": _video_cfg(tmp_path, batch_size=3, shuffle_buffer=4)})["d"]

  def stream(**start):
    batches = pipeline.train_dataset(spec, global_seed=0, **start)
    return pipeline.SkipCounter("d", batches.as_numpy_iterator(),
                                start.get("start_position", 0))
  whole = stream()
  expected = [next(whole) for _ in range(6)]
  first = stream()
  [next(first) for _ in range(3)]
  assert first.skipped >= 1  # the corrupt record came by before the restart
  resumed = stream(start_position=first.next_position)
  for want in expected[3:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["video"], want["video"])
    np.testing.assert_array_equal(got["label"], want["label"])
  # Counting batches instead of stream positions would restart at the wrong record.
  by_batches = stream(start_position=3 * 3)
  assert not np.array_equal(next(by_batches)["video"], expected[3]["video"])


def test_unreadable_image_files_are_skipped_and_counted(tmp_path):
  data_files.write_image_folder(tmp_path, "train", {"a": 2, "b": 2})
  data_files.write_image_folder(tmp_path, "test", {"a": 1, "b": 1})
  data_files.break_symlink(tmp_path / "train" / "a" / "gone.jpg")
  (tmp_path / "train" / "b" / "junk.jpg").write_bytes(data_files.CORRUPT_JPEG)
  cfg = defaults.dataset_config(source="image_folder", path=str(tmp_path), num_classes=2,
                                       num_frames=1, crop_size=16, batch_size=4,
                                       eval_batch_size=2, shuffle_buffer=1, eval_split="test")
  spec = _specs({"pics": cfg})["pics"]
  counter = pipeline.SkipCounter("pics", pipeline.train_dataset(
      spec, global_seed=0).as_numpy_iterator(), first_position=0)
  next(counter), next(counter)
  # Listed: a/0 a/1 a/gone b/0 b/1 b/junk, repeated: positions 2, 5, 8 are gaps so far.
  assert counter.skipped == 3 and counter.next_position == 11


def test_skipped_eval_videos_are_counted_and_padded(tmp_path):
  data_files.write_dmvr(tmp_path, "train", [0, 1], num_classes=3, shards=1)
  data_files.write_dmvr(tmp_path, "test", [0, 1, 2], num_classes=3, shards=1,
                        extra=_bad_records())
  spec = _specs({"d": _video_cfg(tmp_path, eval_batch_size=4)})["d"]
  assert spec.num_test_examples == 6
  ds, num_batches = eval_data.eval_dataset(spec)
  batches = list(ds.as_numpy_iterator())
  assert num_batches == len(batches) == 2
  assert sum(int(b["mask"].sum()) for b in batches) == 3  # the 3 bad ones became padding


def test_empty_dataset_fails_fast_naming_it_and_what_to_check(tmp_path):
  data_files.write_dmvr(tmp_path, "test", [0], num_classes=3, shards=1)
  with pytest.raises(sources.DatasetError,
                     match=r"dataset 'k400': split 'train' has no examples.*Check:.*path"):
    _specs({"k400": _video_cfg(tmp_path)})
  with pytest.raises(sources.DatasetError, match=r"'k400'.*not a directory"):
    _specs({"k400": _video_cfg(tmp_path / "missing")})


def test_dataset_whose_records_all_fail_stops_with_the_first_error(tmp_path):
  data_files.write_dmvr(tmp_path, "train", [], num_classes=3, shards=1, extra=_bad_records())
  data_files.write_dmvr(tmp_path, "test", [0], num_classes=3, shards=1)
  with pytest.raises(sources.DatasetError, match=r"'k400'.*none of the first 32.*"):
    _specs({"k400": _video_cfg(tmp_path)})


def test_class_list_that_disagrees_with_the_records_is_an_error(tmp_path):
  data_files.write_dmvr(tmp_path, "train", [0, 1, 2], num_classes=3)
  data_files.write_dmvr(tmp_path, "test", [0], num_classes=3)
  class_list.write_classes_txt(str(tmp_path), ["class0", "class2", "class1"])  # swapped
  with pytest.raises(class_list.ClassListError,
                     match=r"labelled 2 = 'class2'.*line 3 .* is 'class1'"):
    _specs({"k400": _video_cfg(tmp_path)})


def test_class_count_must_match_the_class_list(tmp_path):
  data_files.write_dmvr(tmp_path, "train", [0, 1], num_classes=3)
  data_files.write_dmvr(tmp_path, "test", [0], num_classes=3)
  with pytest.raises(sources.DatasetError, match=r"3 classes but num_classes = 5"):
    _specs({"k400": _video_cfg(tmp_path, num_classes=5)})


def test_processes_read_their_own_files_in_training_and_exact_shares_in_eval(tmp_path):
  data_files.write_dmvr(tmp_path, "train", [0, 1, 2, 0, 1, 2], num_classes=3, shards=2)
  data_files.write_dmvr(tmp_path, "test", [0, 1, 2], num_classes=3, shards=2)
  source = _specs({"d": _video_cfg(tmp_path)})["d"].source

  def names(split, index, train):
    return sorted(source.parse(raw)["name"].numpy().decode()
                  for raw in source.read(split, index, 2, train=train))
  train = [names("train", i, True) for i in range(2)]
  assert not set(train[0]) & set(train[1]) and len(train[0] + train[1]) == 6
  # All of file 0 (records 0, 2, 4), none of file 1.
  assert {n.split("_")[1] for n in train[0]} == {"0.mp4", "2.mp4", "4.mp4"}
  test = [names("test", i, False) for i in range(2)]
  assert sorted(test[0] + test[1]) == ["test_0.mp4", "test_1.mp4", "test_2.mp4"]
  assert [len(t) for t in test] == [source.num_examples("test", i, 2) for i in range(2)]
