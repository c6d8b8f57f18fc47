"""Official TimeSformer and HuggingFace checkpoints -> our model: logits parity, any T, resizing.

Fixtures (tests/fixtures/make_pretrained_fixtures.py, made once with torch +
transformers): a tiny random HuggingFace TimesformerForVideoClassification
(hf/), the same weights under the official key names (official_state.npz),
an input clip and HuggingFace's logits on it. Oracles: those logits, and
tests/numpy_reference.py (the official forward pass in NumPy) for what HF
cannot do (other frame counts, other grids).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cover_jax.pretrained import files, fit, huggingface, loader, timesformer_torch
from tests import numpy_reference as ref
from tests.pretrained_helpers import (FIXTURES, PARITY_ATOL, TIMESFORMER_DIMS, load_model, logits,
                                      released_normalisation, tiny_model_config)

CLASSES = ["abseiling", "juggling balls", "playing cello", "surfing water", "yawning"]
SOURCES = {
    "hf_dir": FIXTURES / "hf",
    "hf_safetensors": FIXTURES / "hf" / "model.safetensors",
    "official_npz": FIXTURES / "official_state.npz",
}


def _model_config(**overrides):
  return tiny_model_config(TIMESFORMER_DIMS, **{"image_size": 32, "num_frames": 4, **overrides})


@pytest.fixture(scope="module")
def clip():
  return released_normalisation(np.load(FIXTURES / "clip_u8.npy"))


@pytest.fixture(scope="module")
def official_sd():
  """The official state dict (float64) for the NumPy reference."""
  return {k: np.asarray(v, np.float64) for k, v in files.read_npz(str(FIXTURES / "official_state.npz")).items()}


@pytest.fixture(scope="module")
def hf_model():
  return load_model(SOURCES["hf_dir"], _model_config(), {"k400": 5}, head_map="k400=head")[0]


def _reference(clip_bthwc, sd):
  return ref.forward(ref.to_official_input(clip_bthwc), sd, attention_type="divided_space_time",
                     num_heads=4)


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_converted_logits_match_huggingface(clip, source):
  model, report, weights = load_model(SOURCES[source], _model_config(), {"k400": 5},
                                      head_map="k400=head")
  assert report.loaded_heads == {"k400": "head"} and not weights.unexpected
  ours = logits(model, clip, "k400")
  hf32, hf64 = np.load(FIXTURES / "hf_logits_f32.npy"), np.load(FIXTURES / "hf_logits_f64.npy")
  assert np.abs(hf64).max() > 0.5 and np.abs(hf64[0] - hf64[1]).max() > 0.1
  np.testing.assert_allclose(ours, hf32, atol=PARITY_ATOL, rtol=0)
  np.testing.assert_allclose(ours, hf64, atol=PARITY_ATOL, rtol=0)


def test_fixture_official_names_give_the_official_forward_pass(clip, official_sd):
  """The HF -> official renaming of the fixture, checked against the NumPy official model."""
  np.testing.assert_allclose(_reference(clip, official_sd), np.load(FIXTURES / "hf_logits_f64.npy"),
                             atol=1e-6, rtol=0)


@pytest.mark.parametrize("frames", [2, 6])
def test_any_frame_count_follows_the_official_model(hf_model, official_sd, frames):
  """HF would reshape by its configured 4 frames; the official model (and ours) adapt."""
  clip = np.random.default_rng(frames).uniform(-1, 1, (2, frames, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(logits(hf_model, clip, "k400"), _reference(clip, official_sd),
                             atol=PARITY_ATOL, rtol=0)


def test_conversion_to_a_new_grid_and_frame_count_computes_what_the_original_does(official_sd):
  """Embeddings are nearest-resized when loading exactly as the official model does at run time."""
  mc = _model_config(image_size=48, num_frames=2)  # 4x4 -> 6x6 patches, 4 -> 2 frames
  model, report, _ = load_model(SOURCES["hf_dir"], mc, {"k400": 5}, head_map="k400=head")
  assert any("4x4 -> 6x6 (nearest)" in r for r in report.resized)
  assert any("4 -> 2 frames" in r for r in report.resized)
  clip = np.random.default_rng(9).uniform(-1, 1, (1, 2, 48, 48, 3)).astype(np.float32)
  np.testing.assert_allclose(logits(model, clip, "k400"), _reference(clip, official_sd),
                             atol=PARITY_ATOL, rtol=0)


def test_heads_and_class_names_come_from_config_json():
  weights = loader.read_pretrained(str(SOURCES["hf_dir"]))
  assert weights.info.num_heads == 4 and "config.json" in weights.info.heads_from
  assert weights.info.class_names == {"head": CLASSES}
  assert weights.info.num_frames == 4 and weights.info.image_size == 32
  assert weights.info.mean == weights.info.std == (0.5, 0.5, 0.5)


def test_without_config_json_heads_must_be_given(tmp_path):
  shutil.copy(SOURCES["hf_safetensors"], tmp_path / "model.safetensors")
  with pytest.raises(files.CheckpointFileError, match="cannot tell the number of attention heads"):
    loader.read_pretrained(str(tmp_path))
  weights = loader.read_pretrained(str(tmp_path), num_heads=4)
  assert weights.params["backbone/blocks/0/attn/qkv_kernel"].shape == (32, 3, 4, 8)


def test_config_json_heads_that_differ_from_the_model_name_the_fix(tmp_path):
  shutil.copytree(SOURCES["hf_dir"], tmp_path / "hf")
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  config["num_attention_heads"] = 8
  (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
  mc = _model_config(num_heads=0)  # Mu's 4 heads
  with pytest.raises(fit.PretrainedMismatchError, match=r"--config\.model\.num_heads=8"):
    load_model(tmp_path / "hf", mc, {"k400": 5})


def test_unsupported_architecture_settings_are_refused(tmp_path):
  shutil.copytree(SOURCES["hf_dir"], tmp_path / "hf")
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  config.update(hidden_act="relu", layer_norm_eps=1e-12)
  (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
  with pytest.raises(files.CheckpointFileError, match="hidden_act='relu'.*layer_norm_eps=1e-12"):
    loader.read_pretrained(str(tmp_path / "hf"))


def test_official_cfg_is_read():
  info = timesformer_torch.info_from_cfg((FIXTURES / "official_cfg.yaml").read_text())
  assert (info.num_frames, info.stride, info.image_size) == (4, 8, 32)
  assert info.mean == info.std == (0.5, 0.5, 0.5)
  assert info.dataset == "kinetics" and info.attention_type == "divided_space_time"
  assert info.num_heads is None  # a custom model name says nothing about heads
  named = timesformer_torch.info_from_cfg("MODEL:\n  MODEL_NAME: vit_base_patch16_224\n")
  assert named.num_heads == 12 and "vit_base_patch16_224" in named.heads_from


def test_hf_names_map_one_to_one_onto_official_names():
  hf = files.read_safetensors(str(SOURCES["hf_safetensors"]))
  official, sources, unknown = huggingface.to_official(hf)
  assert not unknown and len(official) == len(hf)
  assert set(official) == set(files.read_npz(str(SOURCES["official_npz"])))
  assert sources["blocks.1.mlp.fc2.weight"] == "timesformer.encoder.layer.1.output.dense.weight"
  assert sources["blocks.1.attn.proj.weight"] == "timesformer.encoder.layer.1.attention.output.dense.weight"


# --- PyTorch files (.pyth, pytorch_model.bin): only where torch is installed ---------------


def _official_pyth(tmp_path, torch) -> str:
  state = files.read_npz(str(SOURCES["official_npz"]))
  path = str(tmp_path / "TimeSformer_tiny.pyth")
  torch.save({"epoch": 3, "cfg": (FIXTURES / "official_cfg.yaml").read_text(),
              "model_state": {"model." + k: torch.tensor(v) for k, v in state.items()},
              "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.1}]}}, path)
  return path


def test_official_pyth_and_hf_bin_load_with_weights_only(tmp_path, clip):
  torch = pytest.importorskip("torch")
  path = _official_pyth(tmp_path, torch)
  model, _, weights = load_model(path, _model_config(), {"k400": 5}, head_map="k400=head")
  assert weights.format == "timesformer_pyth" and weights.info.stride == 8
  assert "optimizer_state" in weights.dropped and "epoch" in weights.dropped
  np.testing.assert_allclose(logits(model, clip, "k400"), np.load(FIXTURES / "hf_logits_f32.npy"),
                             atol=PARITY_ATOL, rtol=0)
  hf_dir = tmp_path / "hf_bin"
  hf_dir.mkdir()
  shutil.copy(FIXTURES / "hf" / "config.json", hf_dir / "config.json")
  hf = files.read_safetensors(str(SOURCES["hf_safetensors"]))
  torch.save({k: torch.tensor(v) for k, v in hf.items()}, hf_dir / "pytorch_model.bin")
  model, _, weights = load_model(hf_dir, _model_config(), {"k400": 5}, head_map="k400=head")
  np.testing.assert_allclose(logits(model, clip, "k400"), np.load(FIXTURES / "hf_logits_f32.npy"),
                             atol=PARITY_ATOL, rtol=0)
