"""`python -m cover_jax.export`: to HuggingFace transformers and to a release checkpoint, exactly.

Sources: a real tiny training run (the demo's tiny variant with 2 layers,
3 steps; heads appearance, motion and images), the same run with
`model.scan_layers`, a `convert` output of the HuggingFace fixture, and
checkpoints with random parameters for the other attention types.

Without torch, exactness is checked through our own importer: an export
converted back (`convert`) predicts the original's logits, and its key set
and shapes equal transformers' own model's for the tiny config
(tests/fixtures/export/hf_keys_tiny.json, made once with transformers by
tests/fixtures/make_export_fixtures.py). Where torch and transformers are
installed (`pip install -e ".[bench]"`), transformers loads the export and
its logits are compared with ours.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cover_jax import convert, export, predict
from cover_jax.checkpoint import manager
from cover_jax.pretrained import files, hf_export, loader, orbax_init
from cover_jax.train import loop
from tests.helpers import REPO, load_config
from tests.pretrained_helpers import FIXTURES, PARITY_ATOL

HF_KEYS = REPO / "tests" / "fixtures" / "export" / "hf_keys_tiny.json"
INSTALL_BENCH = 'pip install -e ".[bench]"'


def _run(*flags):
  return subprocess.run([sys.executable, "-m", "cover_jax.export", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def _train(data_dir, workdir, arg="tiny=true", **overrides) -> str:
  config = load_config(arg=arg, data_dir=data_dir, total_steps=3, checkpoint_every=3,
                       eval_every=0, log_every=3, **{"model.depth": 2, **overrides})
  loop.train_and_evaluate(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope="module")
def workdir(tiny_data_dir, tmp_path_factory):
  """A 3-step run of the tiny demo with 2 layers: heads appearance, images, motion."""
  return _train(tiny_data_dir, tmp_path_factory.mktemp("run") / "workdir")


@pytest.fixture(scope="module")
def scanned_workdir(tiny_data_dir, tmp_path_factory):
  return _train(tiny_data_dir, tmp_path_factory.mktemp("scan") / "workdir",
                arg="tiny=true,datasets=motion", **{"model.scan_layers": True})


@pytest.fixture(scope="module")
def hf_all(workdir, tmp_path_factory):
  """The run exported by the command, one directory per head."""
  out = tmp_path_factory.mktemp("hf") / "all"
  result = _run(f"--checkpoint={workdir}", "--dataset=all", f"--output={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  return out, result.stdout


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """A 4-frame clip and an image at the tiny model's 16 px (uint8 .npy)."""
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("inputs")
  np.save(root / "clip.npy", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
  np.save(root / "image.npy", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
  return {"motion": root / "clip.npy", "images": root / "image.npy"}


@pytest.fixture(scope="module")
def run_logits(workdir, inputs):
  """The run's own logits on the inputs (predict, as evaluation sees them), per head."""
  return {head: _logits(workdir, path, head) for head, path in inputs.items()}


def _logits(checkpoint, path, head) -> np.ndarray:
  return predict.predict(str(checkpoint), str(path), dataset=head)[head].logits


def _shapes(directory) -> dict[str, list[int]]:
  state = files.read_safetensors(str(directory / "model.safetensors"))
  assert all(v.dtype == np.float32 for v in state.values())
  return {k: list(v.shape) for k, v in state.items()}


def test_hf_export_command_writes_a_transformers_model_directory(workdir, hf_all):
  out, stdout = hf_all
  assert sorted(os.listdir(out)) == ["appearance", "images", "motion"]
  meta = manager.read_meta(manager.step_dirs(workdir)[0])
  motion = out / "motion"
  assert sorted(os.listdir(motion)) == sorted(hf_export.FILES)
  assert _shapes(motion) == json.loads(HF_KEYS.read_text())  # transformers' own key set
  config = json.loads((motion / "config.json").read_text())
  assert {k: config[k] for k in ("image_size", "patch_size", "num_frames", "hidden_size",
                                 "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                 "layer_norm_eps", "qkv_bias", "attention_type", "drop_path_rate")
          } == dict(image_size=16, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, layer_norm_eps=1e-6, qkv_bias=True,
                    attention_type="divided_space_time", drop_path_rate=0)
  assert type(config["drop_path_rate"]) is int  # TimesformerConfig refuses 0.0
  assert config["cover_jax_export"]["dataset"] == "motion"  # for convert to bring it back
  names = meta["class_names"]["motion"]
  assert config["id2label"] == {str(i): n for i, n in enumerate(names)}
  assert config["label2id"] == {n: i for i, n in enumerate(names)}
  for name in ("preprocessor_config.json", "video_preprocessor_config.json"):
    pre = json.loads((motion / name).read_text())
    assert pre["size"] == {"shortest_edge": 16} and pre["crop_size"] == {"height": 16, "width": 16}
    assert pre["image_mean"] == [0.45] * 3 and pre["image_std"] == [0.225] * 3
  images = json.loads((out / "images" / "config.json").read_text())
  assert images["num_frames"] == 1 and len(images["id2label"]) == 36  # an image head: T = 1
  assert "exactly 4 frame(s)" in (motion / "README.md").read_text()
  assert "exactly 4 frame(s)" in stdout and "from_pretrained(" in stdout


@pytest.mark.parametrize("head", ["motion", "images"])
def test_hf_export_converted_back_predicts_the_original_logits(workdir, hf_all, inputs, run_logits,
                                                                 head, tmp_path):
  back = tmp_path / "back"
  config = convert.convert(str(hf_all[0] / head), str(back), fmt="hf")
  # The export says which head it was, how it sampled and normalised (config.json's
  # cover_jax_export entry and the processor), so convert brings those back.
  original = manager.saved_config(manager.read_meta(manager.step_dirs(workdir)[0]))
  assert list(config["datasets"]) == [head]
  assert config["datasets"][head]["stride"] == original["datasets"][head]["stride"]
  assert config["input"] == {**config["input"], "mean": [0.45] * 3, "std": [0.225] * 3}
  np.testing.assert_allclose(_logits(back, inputs[head], head), run_logits[head],
                             atol=PARITY_ATOL, rtol=0)


def test_export_of_a_convert_output_gives_back_the_huggingface_model(tmp_path):
  converted = tmp_path / "converted"
  convert.convert(str(FIXTURES / "hf"), str(converted), dataset="k400")
  export.export(str(converted), str(tmp_path / "hf"), fmt="hf")  # the only head
  theirs = files.read_safetensors(str(FIXTURES / "hf" / "model.safetensors"))
  ours = files.read_safetensors(str(tmp_path / "hf" / "model.safetensors"))
  assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in theirs)
  want = json.loads((FIXTURES / "hf" / "config.json").read_text())
  got = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert {k: got[k] for k in ("image_size", "num_frames", "hidden_size", "num_attention_heads",
                              "attention_type")} == {
      k: want[k] for k in ("image_size", "num_frames", "hidden_size", "num_attention_heads",
                           "attention_type")}
  assert got["id2label"] == want["id2label"]


def test_a_scanned_run_exports_what_a_per_block_run_does(scanned_workdir, inputs, tmp_path):
  export.export(scanned_workdir, str(tmp_path / "hf"), fmt="hf")  # its only head: motion
  assert _shapes(tmp_path / "hf") == json.loads(HF_KEYS.read_text())
  back = loader.read_pretrained(str(tmp_path / "hf"))
  saved = orbax_init.read(scanned_workdir).params  # per block
  assert all(np.array_equal(back.params[k.replace("heads/motion/", "heads/head/")], v)
             for k, v in saved.items())
  export.export(scanned_workdir, str(tmp_path / "release"), fmt="orbax")
  np.testing.assert_array_equal(_logits(tmp_path / "release", inputs["motion"], "motion"),
                                _logits(scanned_workdir, inputs["motion"], "motion"))


def test_orbax_release_holds_the_parameters_only(workdir, inputs, run_logits, tmp_path):
  out = tmp_path / "release"
  result = _run(f"--checkpoint={workdir}", f"--output={out}", "--format=orbax")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "saved" in result.stdout and f"--config.init_from={out}" in result.stdout
  assert sorted(os.listdir(out)) == ["checkpoints", "config.json"]
  state = manager.read_state(str(out / "checkpoints" / "0"))
  assert sorted(state) == ["params", "step"] and int(state["step"]) == 0  # no optimizer state
  source_meta = manager.read_meta(manager.step_dirs(workdir)[0])
  meta = manager.read_meta(str(out / "checkpoints" / "0"))
  assert meta["class_names"] == source_meta["class_names"]
  assert meta["prepared"] == source_meta["prepared"]
  assert manager.saved_config(meta) == manager.saved_config(source_meta)
  read = export.dir_bytes(manager.step_dirs(workdir)[0])
  assert export.dir_bytes(out / "checkpoints" / "0") < read / 2  # AdamW keeps 2 moments
  # --config.init_from=OUT loads exactly the run's parameters into the same model ...
  config = load_config(arg="tiny=true", **{"model.depth": 2})
  shapes = loader.model_param_shapes(config.model, {"appearance": 12, "images": 36, "motion": 8})
  arrays, _, _ = loader.load_pretrained(str(out), "auto", config.model, shapes, heads="all")
  saved = orbax_init.read(workdir).params
  assert sorted(arrays) == sorted(saved) and all(np.array_equal(arrays[k], saved[k]) for k in saved)
  # ... and predict from it gives the run's logits.
  np.testing.assert_array_equal(_logits(out, inputs["motion"], "motion"), run_logits["motion"])


def _random_checkpoint(directory, attention_type: str) -> str:
  """A parameters-only checkpoint of ours with random parameters (one head, 'motion')."""
  config = load_config(arg="tiny=true,datasets=motion", **{"model.depth": 2,
                                                          "model.attention_type": attention_type})
  shapes = loader.model_param_shapes(config.model, {"motion": 8})
  rng = np.random.default_rng(1)
  arrays = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in shapes.items()}
  meta = {"step": 0, "config": config.to_json(), "class_names": {"motion": list("abcdefgh")}}
  params = loader.params_state(arrays, config.model, {"motion": 8})
  manager.write_params_only(str(directory), params, config.to_json(), meta)
  return str(directory)


def test_joint_space_time_exports_exactly(tmp_path):
  source = _random_checkpoint(tmp_path / "joint", "joint_space_time")
  export.export(source, str(tmp_path / "hf"))
  config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert config["attention_type"] == "joint_space_time"
  assert not any("temporal" in k for k in _shapes(tmp_path / "hf"))
  assert len(_shapes(tmp_path / "hf")) == 33
  back = loader.read_pretrained(str(tmp_path / "hf")).params
  saved = orbax_init.read(source).params
  assert all(np.array_equal(back[k.replace("heads/motion/", "heads/head/")], v)
             for k, v in saved.items())


def test_bad_input_is_refused_with_exit_2_and_nothing_written(workdir, tmp_path):
  out = tmp_path / "out"
  result = _run(f"--checkpoint={workdir}", "--dataset=kinetics", f"--output={out}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  assert ("error: --dataset=kinetics: no such head; the checkpoint's heads are appearance, "
          "images, motion (or --dataset=all)") in result.stderr
  assert not out.exists()
  (tmp_path / "empty").mkdir()
  cases = {
      "no checkpoint steps": dict(checkpoint=str(tmp_path / "empty"), output=str(out)),
      "--dataset is needed": dict(checkpoint=workdir, output=str(out)),
      "exists and is not an empty directory": dict(checkpoint=workdir, output=str(tmp_path),
                                                   dataset="motion"),
      "'space_only', which HuggingFace runs differently": dict(
          checkpoint=_random_checkpoint(tmp_path / "space", "space_only"), output=str(out)),
  }
  for message, kw in cases.items():
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(export.ExportError, match=message):
      export.export(kw["checkpoint"], kw["output"], dataset=kw.get("dataset"))
    assert sorted(os.listdir(tmp_path)) == before and not out.exists()


# --- transformers itself: only where torch and transformers are installed --------------------


def _transformers():
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError:
    pytest.skip(f"needs torch and transformers: {INSTALL_BENCH}")
  return torch, transformers


def _hf_logits(directory, frames_thwc, torch, transformers):
  """(logits, pixel_values) of transformers' model and processor on uint8 frames."""
  model, info = transformers.TimesformerForVideoClassification.from_pretrained(
      str(directory), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
  processor = transformers.AutoImageProcessor.from_pretrained(str(directory))
  pixels = processor(list(frames_thwc), return_tensors="pt")["pixel_values"]
  with torch.no_grad():
    return model.eval()(pixel_values=pixels).logits.numpy()[0], pixels.numpy()[0]


@pytest.mark.parametrize("head", ["motion", "images"])
def test_transformers_loads_the_export_and_computes_our_logits(hf_all, inputs, run_logits, head):
  torch, transformers = _transformers()
  frames = np.load(inputs[head])
  frames = frames[None] if frames.ndim == 3 else frames
  logits, pixels = _hf_logits(hf_all[0] / head, frames, torch, transformers)
  expected = (frames / 255.0 - 0.45) / 0.225  # the run's input.mean/std
  np.testing.assert_allclose(pixels, expected.transpose(0, 3, 1, 2), atol=1e-5, rtol=0)
  np.testing.assert_allclose(logits, run_logits[head], atol=PARITY_ATOL, rtol=0)


def test_transformers_runs_a_joint_space_time_export_as_ours(inputs, tmp_path):
  torch, transformers = _transformers()
  source = _random_checkpoint(tmp_path / "joint", "joint_space_time")
  export.export(source, str(tmp_path / "hf"))
  logits, _ = _hf_logits(tmp_path / "hf", np.load(inputs["motion"]), torch, transformers)
  np.testing.assert_allclose(logits, _logits(source, inputs["motion"], "motion"),
                             atol=PARITY_ATOL, rtol=0)
