"""`config.init_from` in training: the resume order, our own checkpoints, released formats.

Resume order (loop._setup): the newest checkpoint in the workdir that
restores, else `init_from` loaded into the freshly initialised (sharded)
state, else the fresh state.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from cover_jax.checkpoint import manager
from cover_jax.train import loop, optim, state as train_state
from cover_jax.parallel import sharding
from cover_jax.prepare import synthetic
from cover_jax.models import block_stack
from cover_jax.config.validation import ConfigError, validate_config
from cover_jax.pretrained import fit, loader
from tests.helpers import REPO, fake_devices_env, load_config
from tests.pretrained_helpers import FIXTURES

# Shape of the demo's tiny model: width 32, 1 layer, 2 heads, MLP 64, patch 8, 16 px, 4 frames.


def _pure(params) -> dict:
  return nnx.to_pure_dict(params)


def _save_source_checkpoint(path, config, num_classes, seed: int) -> dict:
  """A checkpoint of ours with random parameters (heads `num_classes`); returns its params."""
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  mesh = sharding.make_mesh((-1, 1, 1))
  _, _, shardings = train_state.abstract_train_state(config.model, num_classes, tx, mesh)
  state = train_state.init_train_state(jax.random.key(seed), config.model, num_classes, tx, shardings)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: jax.numpy.asarray(rng.standard_normal(x.shape), x.dtype), state.params)
  state = state.replace(params=params)
  ckpt = manager.Checkpointer(str(path), max_to_keep=1, asynchronous=False)
  ckpt.save(40, state, {"step": 40, "config": config.to_json(),
                        "class_names": {n: [f"{n}{i}" for i in range(c)] for n, c in num_classes.items()}})
  ckpt.close()
  return _pure(params)


@pytest.fixture(scope="module")
def source(tiny_data_dir, tmp_path_factory):
  """A previous run's checkpoints dir: 'appearance' head of the same size, 'motion' of another."""
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir)
  path = tmp_path_factory.mktemp("source") / "checkpoints"
  params = _save_source_checkpoint(path, config, {"appearance": 12, "motion": 5}, seed=3)
  return path, params


def _setup(config, workdir):
  run = loop._setup(config, str(workdir))  # pylint: disable=protected-access
  run.ckpt.close()
  run.writer.close()
  return run


def test_init_from_our_checkpoint_loads_backbone_and_matching_heads(tiny_data_dir, source, tmp_path):
  path, expected = source
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir, init_from=str(path))
  run = _setup(config, tmp_path / "finetune")
  assert run.start_step == 0  # a fresh schedule, not the source's step 40
  got = _pure(run.state.params)
  for leaf_got, leaf_expected in zip(jax.tree.leaves(got["backbone"]), jax.tree.leaves(expected["backbone"])):
    np.testing.assert_array_equal(np.asarray(leaf_got), np.asarray(leaf_expected))
  np.testing.assert_array_equal(got["heads"]["appearance"]["kernel"], expected["heads"]["appearance"]["kernel"])
  # motion has 8 classes here, 5 in the source: a new head (the demo's random init), as images.
  assert got["heads"]["motion"]["kernel"].shape == (32, 8)
  assert np.abs(got["heads"]["motion"]["kernel"]).max() < 0.05  # std 0.02 init, not N(0, 1)
  # A fresh optimizer: AdamW's moments start at zero whatever the parameters.
  assert all(not np.any(np.asarray(leaf)) for leaf in jax.tree.leaves(run.state.opt_state)
             if np.ndim(leaf) > 0)


def test_workdir_checkpoint_wins_over_init_from(tiny_data_dir, source, tmp_path):
  path, expected = source
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir, init_from=str(path))
  workdir = tmp_path / "run"
  run = _setup(config, workdir)
  ckpt = manager.Checkpointer(str(workdir / "checkpoints"), max_to_keep=2, asynchronous=False)
  bumped = run.state.replace(step=run.state.step + 7, params=jax.tree.map(lambda x: x + 1.0, run.state.params))
  ckpt.save(7, bumped, {"step": 7, "config": config.to_json()})
  ckpt.close()
  resumed = _setup(config, workdir)
  assert resumed.start_step == 7
  np.testing.assert_array_equal(_pure(resumed.state.params)["backbone"]["cls_token"],
                                np.asarray(expected["backbone"]["cls_token"]) + 1.0)


def test_init_from_a_huggingface_model_with_head_map(tiny_data_dir, tmp_path):
  """Released weights into the demo: 2 layers of width 32, 4 heads (config.json), 4x4 -> 2x2 grid."""
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir, init_from=str(FIXTURES / "hf"),
                       **{"model.depth": 2, "init.head_map": "motion=head"})
  shapes = loader.model_param_shapes(config.model, {"motion": 8})
  with pytest.raises(fit.PretrainedMismatchError, match=r"it has 4 attention heads \(from .*config.json"):
    loader.load_pretrained(config.init_from, "auto", config.model, shapes)  # the tiny demo has 2
  config.model.num_heads = 4
  shapes = loader.model_param_shapes(config.model, {"motion": 8})
  with pytest.raises(fit.PretrainedMismatchError, match="checkpoint head 'head' has 5 classes, the dataset 8"):
    loader.load_pretrained(config.init_from, "auto", config.model, shapes, head_map="motion=head")
  config.init.head_map = ""
  run = _setup(config, tmp_path / "run")
  got = _pure(run.state.params)["backbone"]
  hf_pos = np.load(FIXTURES / "official_state.npz")["pos_embed"][0]
  np.testing.assert_array_equal(got["pos_embed"], hf_pos[[0, 1, 3, 9, 11]])  # grid rows/cols 0, 2


def test_training_checkpoints_record_class_names(tiny_run):
  workdir, _ = tiny_run
  meta = json.loads((workdir / "checkpoints" / "3" / "meta" / "metadata").read_text())
  assert meta["class_names"]["motion"] == list(synthetic.MOTION_CLASSES)
  assert meta["class_names"]["motion"][:2] == ["move left", "move right"]
  assert len(meta["class_names"]["images"]) == 36


def test_init_settings_are_validated_early(tiny_data_dir):
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir, init_from="/nonexistent/ViT-B_16.npz",
                       **{"init.format": "keras", "init.heads": "some", "init.head_map": "k400=head",
                          "init.posemb_resize": "bicubic"})
  with pytest.raises(ConfigError) as info:
    validate_config(config, num_devices=1)
  message = str(info.value)
  assert "init_from" not in message  # existence is checked when the run starts
  assert "config.init.format = 'keras'" in message and "timesformer_pyth" in message
  assert "config.init.heads = 'some'" in message and "matching, none, all" in message
  assert "config.init.head_map = 'k400=head': names dataset(s) ['k400']" in message
  assert "config.init.posemb_resize = 'bicubic'" in message


def test_main_reports_an_unloadable_init_from_without_traceback(tiny_data_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "cover_jax.main", "--config=configs/demo.py:tiny=true",
       f"--workdir={tmp_path / 'w'}", f"--config.data_dir={tiny_data_dir}",
       f"--config.init_from={FIXTURES / 'vit.npz'}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert "error: config.init_from: cannot initialise the model from" in result.stderr
  assert "fix: the checkpoint has 2 layers of width 16" in result.stderr
  assert not (tmp_path / "w" / "checkpoints").exists() or not any((tmp_path / "w" / "checkpoints").iterdir())


_SHARDED_INIT = r"""
import sys
import jax, numpy as np
from cover_jax.train import loop
from cover_jax.pretrained import loader
from tests.helpers import load_config
config = load_config(arg="tiny=true", data_dir=sys.argv[1], init_from=sys.argv[2],
                     mesh_shape=(2, 2, 2), **{"model.depth": 2, "model.num_heads": 4})
run = loop._setup(config, sys.argv[3])
run.ckpt.close(); run.writer.close()
arrays, _, _ = loader.load_pretrained(sys.argv[2], "auto", config.model,
                                      loader.param_shapes(run.state.params))
shardings = {loader.flat_key(p): s for p, s in
             jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda x: x.sharding, run.state.params))[0]}
sharded = 0
for path, leaf in jax.tree_util.tree_flatten_with_path(run.state.params)[0]:
  key = loader.flat_key(path)
  assert leaf.sharding.is_equivalent_to(shardings[key], leaf.ndim), key
  if key in arrays:
    np.testing.assert_array_equal(np.asarray(leaf), arrays[key], err_msg=key)
  sharded += not leaf.sharding.is_fully_replicated
qkv = run.state.params["backbone"]["blocks"][0]["attn"]["qkv_kernel"]
print("devices", len(qkv.sharding.device_set), "spec", qkv.sharding.spec, "sharded", sharded)
"""


def test_init_from_places_weights_in_the_sharded_state_on_eight_devices(tiny_data_dir, tmp_path):
  """fsdp x tensor mesh (2, 2, 2): every process-local shard comes from the checkpoint."""
  result = subprocess.run(
      [sys.executable, "-c", _SHARDED_INIT, tiny_data_dir, str(FIXTURES / "hf"), str(tmp_path / "w")],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env=fake_devices_env(8, PYTHONPATH=str(REPO)))
  assert result.returncode == 0, result.stderr[-3000:]
  # qkv_kernel (D, 3, H, D/H): embed over fsdp, heads over tensor; so are most parameters.
  assert "devices 8 spec P('fsdp', None, 'tensor', None)" in result.stdout
  assert int(result.stdout.split("sharded")[1]) > 40


def _flat(tree, prefix="") -> dict:
  if not isinstance(tree, dict):
    return {prefix: np.asarray(tree)}
  return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}


@pytest.mark.parametrize("source_scanned", [False, True], ids=["loop_to_scan", "scan_to_loop"])
def test_init_from_a_checkpoint_of_the_other_block_layout(tiny_data_dir, tmp_path,
                                                          source_scanned):
  layers = {"model.depth": 2}  # two blocks: the stacking order matters
  source_config = load_config(arg="tiny=true", data_dir=tiny_data_dir, **layers,
                              **{"model.scan_layers": source_scanned})
  expected = _save_source_checkpoint(tmp_path / "source" / "checkpoints", source_config,
                                     {"appearance": 12}, seed=5)
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir, init_from=str(tmp_path / "source"),
                       **layers, **{"model.scan_layers": not source_scanned})
  got = _pure(_setup(config, tmp_path / "finetune").state.params)["backbone"]
  convert = block_stack.unstack_blocks if source_scanned else block_stack.stack_blocks
  want = _flat(convert(expected["backbone"]))
  got = _flat(got)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
