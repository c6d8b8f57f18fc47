"""Loading the wrong checkpoint fails with a message that says what and how to fix it;
files are never unpickled."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest

from cover_jax.pretrained import files, fit, loader
from cover_jax.pretrained.weights import CheckpointDims, PretrainedWeights
from tests.pretrained_helpers import (FIXTURES, TIMESFORMER_DIMS, VIT_DIMS, load_model,
                                      tiny_model_config)


def _vit_config(**overrides):
  return tiny_model_config(VIT_DIMS, image_size=24, num_frames=2, **overrides)


def _mismatch(path, mc, **kw) -> str:
  shapes = loader.model_param_shapes(mc, {"vid": 3})
  with pytest.raises(fit.PretrainedMismatchError) as info:
    loader.load_pretrained(str(path), "auto", mc, shapes, **kw)
  return str(info.value)


def test_width_mismatch_lists_both_shapes_and_the_settings_that_fit():
  message = _mismatch(FIXTURES / "vit.npz", _vit_config(width=32, num_heads=4, mlp_dim=64))
  assert "shape mismatches" in message
  assert ("backbone/patch_kernel (from embedding/kernel): checkpoint (8, 8, 3, 16), "
          "model (8, 8, 3, 32)") in message
  assert "checkpoint: 2 layers of width 16 (patch 8, MLP 32, 2 heads)" in message
  assert ("fix: the checkpoint has 2 layers of width 16 (patch 8, MLP 32, 2 heads): use "
          "--config.model.variant=B/8 --config.model.width=16 --config.model.depth=2 "
          "--config.model.mlp_dim=32 --config.model.num_heads=2") in message


def test_too_deep_model_lists_missing_keys_and_too_shallow_lists_unexpected_ones():
  message = _mismatch(FIXTURES / "vit.npz", _vit_config(depth=3))
  # Block 2: 12 spatial parameters, and the 6 temporal ones that would copy them.
  assert "missing in the checkpoint (18):" in message
  assert "backbone/blocks/2/attn/qkv_kernel" in message
  message = _mismatch(FIXTURES / "big_vision.npz", _vit_config(depth=1))
  assert "unexpected in the checkpoint (" in message
  assert "params/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel[1]" in message


def test_full_size_checkpoint_suggests_its_variant():
  """A ViT-B/16-shaped checkpoint into a tiny model (shapes only: no memory is used)."""
  mc_b16 = tiny_model_config(dict(variant="B/16"), image_size=224, num_frames=8)
  arrays = {k: np.broadcast_to(np.float32(0), s)
            for k, s in loader.model_param_shapes(mc_b16, {"x": 1}).items() if k.startswith("backbone/")}
  weights = PretrainedWeights(path="ViT-B_16.npz", format="vit_npz", params=arrays,
                              sources={k: k for k in arrays})
  mc = _vit_config()
  with pytest.raises(fit.PretrainedMismatchError) as info:
    fit.fit(weights, loader.model_param_shapes(mc, {"vid": 3}), model_dims=loader.cover.model_dims(mc))
  message = str(info.value)
  assert ("the checkpoint has 12 layers of width 768 (patch 16, MLP 3072, 12 heads): "
          "use variant=B/16 (--config.model.variant=B/16)") in message
  assert "unexpected in the checkpoint" in message and "... and" in message  # long lists cut


@pytest.mark.parametrize("dims,expected", [
    (CheckpointDims(768, 12, 3072, 16, 12), "use variant=B/16 (--config.model.variant=B/16)"),
    (CheckpointDims(1024, 24, 4096, 14, None), "use variant=L/14 (--config.model.variant=L/14)"),
    (CheckpointDims(384, 6, 1536, 16, 6), "use --config.model.variant=S/16 --config.model.depth=6"),
    (CheckpointDims(48, 2, 96, 8, None),
     "use --config.model.variant=B/8 --config.model.width=48 --config.model.depth=2 "
     "--config.model.mlp_dim=96 --config.model.num_heads=<the checkpoint's number of heads>"),
])
def test_suggest_variant(dims, expected):
  assert fit.suggest_variant(dims) == expected


def test_checkpoint_without_cls_token_is_explained(tmp_path):
  arrays = files.read_npz(str(FIXTURES / "big_vision.npz"))
  del arrays["params/cls"]
  np.savez(tmp_path / "gap.npz", **arrays)
  message = _mismatch(tmp_path / "gap.npz", _vit_config())
  assert "missing in the checkpoint (1):\n    backbone/cls_token" in message
  assert "pool_type 'gap' or 'map'" in message


def test_space_only_checkpoint_into_divided_model_names_the_attention_type(tmp_path):
  arrays = {k: v for k, v in files.read_npz(str(FIXTURES / "official_state.npz")).items()
            if "temporal" not in k and k != "time_embed"}
  np.savez(tmp_path / "space_only.npz", **arrays)
  mc = tiny_model_config(TIMESFORMER_DIMS, image_size=32, num_frames=4)
  message = _mismatch(tmp_path / "space_only.npz", mc)
  assert "backbone/blocks/0/temporal_attn/qkv_kernel" in message and "backbone/time_embed" in message
  assert "--config.model.attention_type=space_only" in message


def test_head_map_problems_are_reported():
  mc = tiny_model_config(TIMESFORMER_DIMS, image_size=32, num_frames=4)
  message = _mismatch(FIXTURES / "hf", mc, head_map="vid=head,ssv2=head")
  assert "head_map names dataset 'ssv2', which the model does not have (datasets: vid)" in message
  assert "dataset 'vid': checkpoint head 'head' has 5 classes, the dataset 3" in message
  message = _mismatch(FIXTURES / "hf", mc, head_map="vid=classifier")
  assert "the checkpoint has no head 'classifier' (its heads: head (5 classes))" in message
  message = _mismatch(FIXTURES / "hf", mc, heads="all")
  assert "dataset 'vid': the checkpoint has no head 'vid'" in message
  with pytest.raises(ValueError, match="use DATASET=CHECKPOINT_HEAD"):
    fit.parse_head_map("k400")


def test_heads_none_gives_new_heads_even_where_one_matches():
  mc = tiny_model_config(TIMESFORMER_DIMS, image_size=32, num_frames=4)
  _, report, _ = load_model(FIXTURES / "hf", mc, {"head": 5}, heads="none")
  assert report.loaded_heads == {} and "head" in report.new_heads
  _, report, _ = load_model(FIXTURES / "hf", mc, {"head": 5})
  assert report.loaded_heads == {"head": "head"}


# --- Safety --------------------------------------------------------------------


class _Payload:
  """Unpickling this would create a file: the proof that nothing was unpickled."""

  def __init__(self, marker: str):
    self.marker = marker

  def __reduce__(self):
    return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_npz_with_pickled_objects_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  np.savez(tmp_path / "evil.npz", cls=np.array([_Payload(str(marker))], dtype=object),
           **{"embedding/kernel": np.zeros((8, 8, 3, 16), np.float32)})
  with pytest.raises(files.CheckpointFileError, match="object array.*Refusing"):
    loader.read_pretrained(str(tmp_path / "evil.npz"), "vit_npz")
  assert not marker.exists()


def _evil_pickle(path: pathlib.Path, marker: pathlib.Path) -> None:
  import pickle  # pylint: disable=import-outside-toplevel
  path.write_bytes(pickle.dumps({"model_state": {"x": _Payload(str(marker))}}))


def test_torch_files_without_torch_say_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
  marker = tmp_path / "pwned"
  _evil_pickle(tmp_path / "model.pyth", marker)
  with pytest.raises(files.CheckpointFileError, match=r'torch is not installed.*pip install -e "\.\[torch\]"'):
    loader.read_pretrained(str(tmp_path / "model.pyth"))
  (tmp_path / "hf").mkdir()
  _evil_pickle(tmp_path / "hf" / "pytorch_model.bin", marker)
  with pytest.raises(files.CheckpointFileError, match="torch is not installed"):
    loader.read_pretrained(str(tmp_path / "hf"), num_heads=4)
  assert not marker.exists()


def test_torch_weights_only_refuses_code(tmp_path):
  pytest.importorskip("torch")
  marker = tmp_path / "pwned"
  _evil_pickle(tmp_path / "model.pyth", marker)
  with pytest.raises(files.CheckpointFileError, match=r"weights_only=True\) refused"):
    loader.read_pretrained(str(tmp_path / "model.pyth"))
  assert not marker.exists()


def test_damaged_and_unknown_files_are_explained(tmp_path):
  (tmp_path / "broken.npz").write_bytes(b"not a zip file")
  with pytest.raises(files.CheckpointFileError, match="not a readable .npz"):
    loader.read_pretrained(str(tmp_path / "broken.npz"))
  with pytest.raises(files.CheckpointFileError, match=r"not a readable .npz file \(not a zip archive\)"):
    loader.read_pretrained(str(tmp_path / "broken.npz"), "vit_npz")
  (tmp_path / "weights.h5").write_bytes(b"")
  with pytest.raises(files.CheckpointFileError, match="pass --format"):
    loader.read_pretrained(str(tmp_path / "weights.h5"))
  with pytest.raises(files.CheckpointFileError, match="no such file"):
    loader.read_pretrained(str(tmp_path / "missing.npz"))
  (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
  with pytest.raises(files.CheckpointFileError, match="not a readable safetensors"):
    loader.read_pretrained(str(tmp_path / "broken.safetensors"), num_heads=4)


def test_remote_paths_are_read_through_tensorflow_file_systems():
  """ram:// stands in for gs://: the same tf.io.gfile code path, no network."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  root = "ram://pretrained_test"
  for name in ("vit.npz", "hf/config.json", "hf/model.safetensors"):
    tf.io.gfile.makedirs(f"{root}/hf")
    tf.io.gfile.copy(str(FIXTURES / name), f"{root}/{name}", overwrite=True)
  assert files.detect_format(f"{root}/vit.npz") == "vit_npz"
  assert files.detect_format(f"{root}/hf") == "hf"
  for remote, local in ((f"{root}/vit.npz", FIXTURES / "vit.npz"), (f"{root}/hf", FIXTURES / "hf")):
    got, expected = loader.read_pretrained(remote), loader.read_pretrained(str(local))
    assert got.params.keys() == expected.params.keys() and got.info.num_heads == expected.info.num_heads
    for key in expected.params:
      np.testing.assert_array_equal(got.params[key], expected.params[key])
  with pytest.raises(files.CheckpointFileError, match="no such file"):
    loader.read_pretrained(f"{root}/missing.npz")
