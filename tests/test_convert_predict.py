"""`python -m cover_jax.convert` and `python -m cover_jax.predict` end to end.

A HuggingFace checkpoint (the tiny fixture) is converted once by the command
line, with the default stride (32: TimeSformer's Kinetics sampling);
predictions on the fixture's 4-frame clip must reproduce HuggingFace's
logits, which checks the whole path: conversion, saved config, checkpoint,
and predict's preprocessing (an array of the model's frame count is one clip
as given, [0, 1] scaling, mean/std 0.5).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cover_jax import convert, predict
from cover_jax.pretrained import files
from tests import vit_reference
from tests.helpers import REPO
from tests.pretrained_helpers import FIXTURES, PARITY_ATOL
from tests.video_files import write_video

CLASSES = ["abseiling", "juggling balls", "playing cello", "surfing water", "yawning"]


def _run(module: str, *flags):
  return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """The HF fixture converted by the command line, with the default stride."""
  out = tmp_path_factory.mktemp("converted") / "hf_k400"
  result = _run("cover_jax.convert", f"--input={FIXTURES / 'hf'}", f"--output={out}",
                "--dataset=k400")
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result.stdout


@pytest.fixture(scope="module")
def clip_npy(tmp_path_factory):
  path = tmp_path_factory.mktemp("clip") / "clip.npy"
  np.save(path, np.load(FIXTURES / "clip_u8.npy")[0])  # (T, H, W, 3) uint8
  return path


def test_convert_writes_checkpoint_and_config(converted):
  out, stdout = converted
  config = json.loads((out / "config.json").read_text())
  model = config["model"]
  assert (model["width"], model["depth"], model["num_heads"], model["mlp_dim"]) == (32, 2, 4, 64)
  assert (model["image_size"], model["num_frames"], model["attention_type"]) == (
      32, 4, "divided_space_time")
  assert config["input"]["mean"] == config["input"]["std"] == [0.5, 0.5, 0.5]
  assert config["datasets"]["k400"]["num_classes"] == 5 and config["datasets"]["k400"]["stride"] == 32
  meta = json.loads((out / "checkpoints" / "0" / "meta" / "metadata").read_text())
  assert meta["class_names"] == {"k400": CLASSES}
  assert meta["prepared"] == {"k400": {"fps": 30.0, "short_side": 32, "jpeg_quality": None}}
  assert meta["converted_from"]["format"] == "hf"
  assert f"--config.init_from={out}" in stdout and "--config.model.num_heads=4" in stdout


def test_predict_reproduces_the_reference_logits(converted, clip_npy):
  out, _ = converted
  results = predict.predict(str(out), str(clip_npy))
  logits, names = results["k400"].logits, results["k400"].class_names
  assert names == CLASSES and results["k400"].warnings == []
  np.testing.assert_allclose(logits, np.load(FIXTURES / "hf_logits_f32.npy")[0], atol=PARITY_ATOL, rtol=0)


def test_predict_command_prints_top_k_and_saves_logits(converted, clip_npy, tmp_path):
  out, _ = converted
  result = _run("cover_jax.predict", f"--checkpoint={out}", f"--input={clip_npy}", "--top_k=3",
                f"--output={tmp_path / 'logits.npy'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr == "", result.stderr  # no library notices (TensorFlow's start-up ones)
  expected = np.load(FIXTURES / "hf_logits_f32.npy")[0]
  best = CLASSES[int(np.argmax(expected))]
  lines = result.stdout.strip().splitlines()
  assert lines[0] == "k400 (5 classes):" and len(lines) == 4
  assert lines[1].startswith(f"  1. {best}")
  probs = [float(line.split()[-1]) for line in lines[1:]]
  assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=PARITY_ATOL, rtol=0)


def test_short_inputs_are_looped_with_a_warning_in_the_output(converted, clip_npy, tmp_path):
  out, _ = converted
  np.save(tmp_path / "two.npy", np.load(clip_npy)[:2])
  result = _run("cover_jax.predict", f"--checkpoint={out}", f"--input={tmp_path / 'two.npy'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert ("warning: the input has 2 frame(s), fewer than one clip needs (4 frames 32 apart "
          "span 97)") in result.stdout


def test_predict_decodes_video_files(converted, tmp_path):
  out, _ = converted
  video = write_video(tmp_path / "clip.mp4", num_frames=12, height=40, width=56)
  results = predict.predict(str(out), video, dataset="k400")
  logits = results["k400"].logits
  assert logits.shape == (5,) and np.all(np.isfinite(logits))
  prepared = predict.load(str(out)).prepared["k400"]
  frames, encoded, _ = predict.read_input(video, prepared)
  # Decoded at the converted model's 30 fps (1.2 s: 36 frames), short side at its 32 px.
  assert frames.shape == (36, 32, 45, 3) and not encoded


def test_predict_views_follow_the_dataset_settings():
  from cover_jax.config import defaults  # pylint: disable=import-outside-toplevel
  frames = np.stack([np.full((40, 60, 3), 10 * i, np.uint8) for i in range(20)])
  ds = defaults.dataset_config(num_frames=4, stride=2, crop_size=32, eval_short_side=40,
                               eval_clips=2, eval_crops=3)
  x, warnings = predict.input_views(frames, False, ds)
  assert x.shape == (6, 4, 32, 32, 3) and not warnings
  # Clips start at frames 0 and 13 (evenly spaced, the last ending at the end), frames 2 apart.
  np.testing.assert_array_equal(x[0, :, 0, 0, 0], [0, 20, 40, 60])
  np.testing.assert_array_equal(x[3, :, 0, 0, 0], [130, 150, 170, 190])
  ds.update(sampling="segment", eval_clips=1, eval_crops=1)
  x, _ = predict.input_views(frames, False, ds)
  np.testing.assert_array_equal(x[0, :, 0, 0, 0], [20, 70, 120, 170])  # segment middles
  # Exactly num_frames frames: one clip, as given, whatever the stride.
  ds.update(sampling="stride", stride=8)
  x, warnings = predict.input_views(frames[5:9], False, ds)
  np.testing.assert_array_equal(x[0, :, 0, 0, 0], [50, 60, 70, 80])
  assert x.shape[0] == 1 and not warnings


def test_predict_errors_are_explained(converted, tmp_path):
  out, _ = converted
  np.save(tmp_path / "float.npy", np.zeros((4, 32, 32, 3), np.float32))
  with pytest.raises(predict.PredictError, match="expected uint8 frames"):
    predict.predict(str(out), str(tmp_path / "float.npy"))
  with pytest.raises(predict.PredictError, match=r"the checkpoint's heads are \['k400'\]"):
    predict.predict(str(out), str(tmp_path / "float.npy"), dataset="ssv2")
  with pytest.raises(predict.PredictError, match="no such file"):
    predict.predict(str(out), str(tmp_path / "missing.mp4"))


def test_convert_refuses_to_overwrite_and_keeps_vit_heads_only_without_pre_logits(converted, tmp_path):
  out, _ = converted
  with pytest.raises(ValueError, match="already holds a checkpoint"):
    convert.convert(str(FIXTURES / "hf"), str(out))
  config = convert.convert(str(FIXTURES / "vit.npz"), str(tmp_path / "vit"))
  assert config["datasets"] == {} and config["model"]["num_frames"] == 8
  assert config["model"]["image_size"] == 24 and config["model"]["attention_type"] == "divided_space_time"
  config = convert.convert(str(FIXTURES / "big_vision.npz"), str(tmp_path / "bv"), dataset="in21k")
  assert config["datasets"]["in21k"]["num_classes"] == 7
  assert config["datasets"]["in21k"]["num_frames"] == 1  # an image head
  # Classifying an image with the converted ViT gives the ViT's own logits.
  image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
  np.save(tmp_path / "image.npy", image)
  logits = predict.predict(str(tmp_path / "bv"), str(tmp_path / "image.npy"))["in21k"].logits
  x = (image[None].astype(np.float64) / 255 - 0.5) / 0.5
  _, expected = vit_reference.forward(files.read_npz(str(FIXTURES / "big_vision.npz")), x)
  np.testing.assert_allclose(logits, expected[0], atol=PARITY_ATOL, rtol=0)
