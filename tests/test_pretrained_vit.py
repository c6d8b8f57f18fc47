"""ViT image checkpoints (.npz, both layouts) -> TimeSformer: parity, inflation, resizing.

The oracle is tests/vit_reference.py, a NumPy transcription of the Flax ViT
reading the checkpoint's own key names. Fixtures: tests/fixtures/pretrained/
vit.npz (vision_transformer layout, pre_logits) and big_vision.npz
(big_vision layout: params/ nesting, posemb without cls slot, scanned).
"""

from __future__ import annotations

import numpy as np
import pytest

from cover_jax.pretrained import files, fit, resize, vit_npz
from tests import vit_reference
from tests.pretrained_helpers import (FIXTURES, PARITY_ATOL, VIT_DIMS, features, load_model, logits,
                                      params_of, tiny_model_config)

LAYOUTS = ("vit.npz", "big_vision.npz")


def _images(seed: int, size: int = 24, batch: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def vit_models():
  """Each layout loaded into a divided space-time model at the ViT's own 24 px, 4 frames."""
  mc = tiny_model_config(VIT_DIMS, image_size=24, num_frames=4)
  return {name: load_model(FIXTURES / name, mc, {"img": 7, "vid": 3}, head_map="img=head"
                           if name == "big_vision.npz" else "") for name in LAYOUTS}


@pytest.mark.parametrize("name,fmt", [("vit.npz", "vit_npz"), ("big_vision.npz", "big_vision_npz")])
def test_layouts_are_detected(name, fmt):
  assert files.detect_format(str(FIXTURES / name)) == fmt


@pytest.mark.parametrize("name", LAYOUTS)
def test_image_features_match_the_vit(vit_models, name):
  model, _, _ = vit_models[name]
  images = _images(seed=1)
  arrays = files.read_npz(str(FIXTURES / name))
  expected, _ = vit_reference.forward(arrays, images)
  ours = features(model, images[:, None])  # an image is a 1-frame video
  assert np.abs(expected).max() > 0.5 and np.abs(expected[0] - expected[1]).max() > 0.1
  np.testing.assert_allclose(ours, expected, atol=PARITY_ATOL, rtol=0)


@pytest.mark.parametrize("name", LAYOUTS)
def test_clip_of_identical_frames_gives_the_image_features(vit_models, name):
  """temporal_fc and the time embedding are zero: T copies of a frame = that frame."""
  model, _, _ = vit_models[name]
  images = _images(seed=2)
  expected, _ = vit_reference.forward(files.read_npz(str(FIXTURES / name)), images)
  clip = np.repeat(images[:, None], 4, axis=1)
  np.testing.assert_allclose(features(model, clip), expected, atol=PARITY_ATOL, rtol=0)
  # Different frames give different features: the temporal path is live.
  mixed = clip.copy()
  mixed[:, 1] = _images(seed=3)
  assert np.abs(features(model, mixed) - expected).max() > 1e-2


@pytest.mark.parametrize("name", LAYOUTS)
def test_temporal_parts_start_as_official_timesformer(vit_models, name):
  model, report, _ = vit_models[name]
  p = params_of(model)["backbone"]
  for block in p["blocks"].values():
    for key in ("qkv_kernel", "qkv_bias", "proj_kernel", "proj_bias"):
      np.testing.assert_array_equal(block["temporal_attn"][key], block["attn"][key])
    np.testing.assert_array_equal(block["temporal_norm1"]["scale"], block["norm1"]["scale"])
    np.testing.assert_array_equal(block["temporal_norm1"]["bias"], block["norm1"]["bias"])
    assert not np.any(block["temporal_fc"]["kernel"]) and not np.any(block["temporal_fc"]["bias"])
    assert np.abs(block["attn"]["qkv_kernel"]).max() > 0.1
  assert not np.any(p["time_embed"])
  assert len(report.inflated) == 2 * (4 + 2 + 2) + 1  # per block: attn 4 + norm 2 + fc 2; time
  assert report.new_heads.keys() == ({"img", "vid"} if name == "vit.npz" else {"vid"})


def test_head_loads_where_mapped_and_gives_the_vit_logits(vit_models):
  model, report, _ = vit_models["big_vision.npz"]
  assert report.loaded_heads == {"img": "head"}
  images = _images(seed=4)
  _, expected = vit_reference.forward(files.read_npz(str(FIXTURES / "big_vision.npz")), images)
  np.testing.assert_allclose(logits(model, images[:, None], "img"), expected, atol=PARITY_ATOL, rtol=0)
  assert not np.any(params_of(model)["heads"]["vid"]["kernel"])  # new heads: zero init


def test_head_after_pre_logits_is_not_loadable():
  mc = tiny_model_config(VIT_DIMS, image_size=24, num_frames=2)
  with pytest.raises(fit.PretrainedMismatchError, match="the checkpoint has no head 'head'"):
    load_model(FIXTURES / "vit.npz", mc, {"img": 7}, head_map="img=head")
  weights = vit_npz.convert(files.read_npz(str(FIXTURES / "vit.npz")), "vit.npz", "vit_npz")
  assert "pre_logits" in weights.dropped["head/kernel"]
  assert "pre_logits/kernel" in weights.dropped


def _unscanned_training_checkpoint(tmp_path) -> str:
  """big_vision.npz re-saved looped (encoderblock_N) under opt/target/, with optimizer state."""
  arrays = files.read_npz(str(FIXTURES / "big_vision.npz"))
  out = {"opt/state/step": np.array(7)}
  for key, value in arrays.items():
    key = key[len("params/"):]
    if key.startswith("Transformer/encoderblock/"):
      for i in range(value.shape[0]):
        out["opt/target/" + key.replace("encoderblock/", f"encoderblock_{i}/")] = value[i]
    else:
      out["opt/target/" + key] = value
  path = str(tmp_path / "bv_looped.npz")
  np.savez(path, **out)
  return path


def test_looped_and_scanned_big_vision_convert_identically(tmp_path):
  path = _unscanned_training_checkpoint(tmp_path)
  scanned = vit_npz.convert(files.read_npz(str(FIXTURES / "big_vision.npz")), "a", "big_vision_npz")
  looped = vit_npz.convert(files.read_npz(path), path, files.detect_format(path))
  assert scanned.params.keys() == looped.params.keys()
  for key in scanned.params:
    np.testing.assert_array_equal(scanned.params[key], looped.params[key])
  assert looped.unexpected == [] and "opt/state/step" in looped.dropped
  assert scanned.sources["backbone/blocks/1/mlp/fc1/kernel"] == (
      "params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel[1]")


def test_big_vision_posemb_gets_a_zero_cls_slot_and_vit_keeps_its_own():
  bv = vit_npz.convert(files.read_npz(str(FIXTURES / "big_vision.npz")), "b", "big_vision_npz")
  raw = files.read_npz(str(FIXTURES / "big_vision.npz"))["params/pos_embedding"][0]
  np.testing.assert_array_equal(bv.params["backbone/pos_embed"][0], 0)
  np.testing.assert_array_equal(bv.params["backbone/pos_embed"][1:], raw)
  vit = vit_npz.convert(files.read_npz(str(FIXTURES / "vit.npz")), "v", "vit_npz")
  raw = files.read_npz(str(FIXTURES / "vit.npz"))["Transformer/posembed_input/pos_embedding"][0]
  np.testing.assert_array_equal(vit.params["backbone/pos_embed"], raw)


def test_bilinear_resample_is_corner_aligned_like_big_vision():
  """A linear ramp over a 3x3 grid stays a ramp on 5x5, sampled at i * 2/4 (corners kept)."""
  rows, cols = np.meshgrid(np.arange(3.0), np.arange(3.0), indexing="ij")
  grid = np.stack([10 * rows + cols, -cols], axis=-1).reshape(9, 2)
  pos = np.concatenate([np.array([[7.0, 7.0]]), grid]).astype(np.float32)
  out = resize.resize_pos_embed(pos, 1 + 25, "bilinear")
  r, c = np.meshgrid(np.arange(5) * 0.5, np.arange(5) * 0.5, indexing="ij")
  np.testing.assert_allclose(out[1:].reshape(5, 5, 2)[..., 0], 10 * r + c, atol=1e-5)
  np.testing.assert_allclose(out[1:].reshape(5, 5, 2)[..., 1], -c, atol=1e-5)
  np.testing.assert_array_equal(out[0], [7.0, 7.0])  # the cls slot is never resized


def test_vit_loaded_at_a_new_grid_is_resampled_bilinearly():
  mc = tiny_model_config(VIT_DIMS, image_size=40, num_frames=2)  # 3x3 -> 5x5 patches
  model, report, weights = load_model(FIXTURES / "vit.npz", mc, {"vid": 3})
  assert any("3x3 -> 5x5 (bilinear)" in r for r in report.resized)
  pos = params_of(model)["backbone"]["pos_embed"]
  original = weights.params["backbone/pos_embed"]
  np.testing.assert_array_equal(pos[0], original[0])
  # Corner patches are kept exactly (align-corners); the centre is patch (1, 1).
  grid = pos[1:].reshape(5, 5, -1)
  old = original[1:].reshape(3, 3, -1)
  for (i, j), (oi, oj) in {(0, 0): (0, 0), (0, 4): (0, 2), (4, 4): (2, 2), (2, 2): (1, 1)}.items():
    np.testing.assert_allclose(grid[i, j], old[oi, oj], atol=1e-6)


def test_vit_into_space_only_and_joint_models_loads_without_temporal_parts():
  for attention_type in ("space_only", "joint_space_time"):
    mc = tiny_model_config(VIT_DIMS, image_size=24, num_frames=2, attention_type=attention_type)
    model, report, _ = load_model(FIXTURES / "big_vision.npz", mc, {"vid": 3})
    images = _images(seed=5, batch=1)
    expected, _ = vit_reference.forward(files.read_npz(str(FIXTURES / "big_vision.npz")), images)
    np.testing.assert_allclose(features(model, images[:, None]), expected, atol=PARITY_ATOL, rtol=0)
    assert report.inflated == ([] if attention_type == "space_only" else ["backbone/time_embed"])
