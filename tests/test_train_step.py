"""The pure train/eval steps, the optimizer, and checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cover_jax.checkpoint import manager
from cover_jax.train import optim, state as train_state
from cover_jax.parallel import sharding
from cover_jax.train.step import StepSettings, TrainStep, bind
from tests.helpers import load_config

NAMES = ("appearance", "images", "motion")
CLASSES = {"appearance": 12, "images": 36, "motion": 8}


@pytest.fixture(scope="module")
def setup():
  # Zero heads: predictions start uniform, so initial losses are exactly log(classes).
  config = load_config(arg="tiny=true", **{"model.head_init_std": 0.0})
  mesh = sharding.make_mesh(config.mesh_shape)
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  graphdef, abstract, shardings = train_state.abstract_train_state(config.model, CLASSES, tx, mesh)
  init = lambda seed=0: train_state.init_train_state(jax.random.key(seed), config.model, CLASSES,
                                                     tx, shardings)
  return config, mesh, tx, graphdef, abstract, shardings, init


def _batch(dataset, frames, seed=0, size=16, batch=4):
  rng = np.random.default_rng(seed)
  return {"video": jnp.asarray(rng.normal(size=(batch, frames, size, size, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, CLASSES[dataset], batch), jnp.int32),
          "dataset_index": jnp.asarray(NAMES.index(dataset), jnp.int32)}


def _step_fn(setup, loss_weights=(1.0,), smoothing=0.0, donate=True):
  """Jitted as the trainer does: state keeps its shardings, donated."""
  config, mesh, tx, graphdef, _, shardings, _ = setup
  settings = StepSettings(NAMES, (smoothing,) * 3, tuple(loss_weights))
  lr = optim.learning_rate_schedule(config.optimizer, config.total_steps)
  return jax.jit(bind(graphdef, tx, settings, lr),
                 out_shardings=(shardings, sharding.replicated(mesh)),
                 donate_argnums=0 if donate else ())


def _leaves(tree):
  return jax.tree.leaves(jax.device_get(tree))


def test_state_is_created_with_logical_shardings(setup):
  *_, abstract, shardings, init = setup
  state = init()
  assert int(state.step) == 0
  for leaf, expected in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)
  assert jax.tree.structure(state) == jax.tree.structure(abstract)


def test_step_updates_only_the_batch_dataset_head(setup):
  state = setup[-1]()
  before = nnx.to_pure_dict(jax.device_get(state.params))
  step = _step_fn(setup)
  state, metrics = step(state, (_batch("motion", 4),), jax.random.key(0))  # lr(0) = 0: warm-up
  np.testing.assert_allclose(metrics["loss"], np.log(8), rtol=1e-5)  # zero-init heads: uniform
  state, metrics = step(state, (_batch("motion", 4),), jax.random.key(0))
  after = nnx.to_pure_dict(jax.device_get(state.params))
  assert int(state.step) == 2 and np.isfinite(metrics["loss"])
  # The motion head and the backbone move; the other heads get no gradient.
  assert not np.array_equal(before["heads"]["motion"]["kernel"], after["heads"]["motion"]["kernel"])
  assert not np.array_equal(before["backbone"]["patch_kernel"], after["backbone"]["patch_kernel"])
  for other in ("appearance", "images"):
    np.testing.assert_array_equal(before["heads"][other]["kernel"], after["heads"][other]["kernel"])


def test_one_compilation_per_input_shape(setup):
  step = _step_fn(setup)
  state = setup[-1]()
  for dataset, frames in [("appearance", 4), ("motion", 4), ("images", 1), ("motion", 4),
                          ("images", 1), ("appearance", 4)]:
    state, _ = step(state, (_batch(dataset, frames),), jax.random.key(0))
  assert step._cache_size() == 2  # 4-frame clips (two datasets share it) and T=1 images


def test_all_mode_loss_is_weighted_sum(setup):
  weights = (0.25, 0.25, 0.5)
  batches = (_batch("appearance", 4), _batch("images", 1), _batch("motion", 4))
  state = setup[-1]()
  _, metrics = _step_fn(setup, loss_weights=weights)(state, batches, jax.random.key(0))
  np.testing.assert_allclose(metrics["loss"], np.dot(weights, metrics["batch_loss"]), rtol=1e-6)
  np.testing.assert_allclose(metrics["batch_loss"], np.log([12, 36, 8]), rtol=1e-5)


def test_label_smoothing_changes_the_loss(setup):
  state = setup[-1]()
  batch = (_batch("motion", 4),)
  step = _step_fn(setup, donate=False)
  state1, _ = step(state, batch, jax.random.key(0))
  state1, _ = step(state1, batch, jax.random.key(0))  # past lr(0) = 0: heads non-zero
  _, plain = step(state1, batch, jax.random.key(0))
  _, smooth = _step_fn(setup, smoothing=0.3, donate=False)(state1, batch, jax.random.key(0))
  assert not np.isclose(plain["batch_loss"][0], smooth["batch_loss"][0])


def test_dropout_rng_is_folded_with_the_step(setup):
  config, *_ = setup
  with config.unlocked():
    config.model.dropout = 0.5
  try:
    tx = optim.build_optimizer(config.optimizer, config.total_steps)
    mesh = sharding.make_mesh(config.mesh_shape)
    graphdef, _, shardings = train_state.abstract_train_state(config.model, CLASSES, tx, mesh)
    lr = optim.learning_rate_schedule(config.optimizer, config.total_steps)
    step = jax.jit(bind(graphdef, tx, StepSettings(NAMES, (0.0,) * 3), lr))
    fresh = lambda: train_state.init_train_state(jax.random.key(0), config.model, CLASSES, tx, shardings)
    batch = (_batch("motion", 4),)
    two_steps = lambda key: step(step(fresh(), batch, key)[0], batch, key)[0].params  # lr(0) = 0
    a, b, c = (_leaves(two_steps(jax.random.key(k))) for k in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  finally:
    with config.unlocked():
      config.model.dropout = 0.0


def test_weight_decay_mask(setup):
  params = setup[-1]().params
  mask = nnx.to_pure_dict(optim.weight_decay_mask(params))
  block = mask["backbone"]["blocks"][0]
  assert block["attn"]["qkv_kernel"] and block["mlp"]["fc1"]["kernel"]
  assert mask["backbone"]["patch_kernel"] and mask["heads"]["motion"]["kernel"]
  assert not block["attn"]["qkv_bias"] and not block["norm1"]["scale"]
  assert not block["mlp"]["fc1"]["bias"] and not mask["backbone"]["cls_token"]
  assert not mask["backbone"]["pos_embed"] and not mask["backbone"]["time_embed"]


def test_learning_rate_warmup_then_cosine(setup):
  config = setup[0]
  lr = optim.learning_rate_schedule(config.optimizer, 100)
  peak, warmup = config.optimizer.learning_rate, config.optimizer.warmup_steps
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(lr(warmup), peak, rtol=1e-6)
  np.testing.assert_allclose(lr(100), config.optimizer.end_learning_rate, rtol=1e-5)
  assert float(lr(50)) < peak


def test_sgd_optimizer_builds_and_steps(setup):
  config = load_config(arg="tiny=true", **{"optimizer.name": "sgd"})
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  assert np.all(np.asarray(updates["w"]) <= 0)


def test_checkpoint_round_trip_is_bit_exact(setup, tmp_path):
  *_, abstract, _, init = setup
  state, _ = _step_fn(setup)(init(), (_batch("motion", 4),), jax.random.key(0))
  ckpt = manager.Checkpointer(str(tmp_path), max_to_keep=2)
  ckpt.save(1, state, {"note": "x"})
  ckpt.wait()
  step, restored, meta = manager.Checkpointer(str(tmp_path), max_to_keep=2).restore_latest(abstract)
  assert step == 1 and meta == {"note": "x"}
  for a, b in zip(_leaves(state), _leaves(restored)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["truncate", "drop_metadata", "garble_manifest"])
def test_damaged_latest_checkpoint_falls_back(setup, tmp_path, damage,
                                              failed_restores_collected):
  *_, abstract, _, init = setup
  state = init()
  ckpt = manager.Checkpointer(str(tmp_path), max_to_keep=3)
  ckpt.save(1, state, {"step": 1})
  ckpt.save(2, state, {"step": 2})
  ckpt.close()
  state_dir = tmp_path / "2" / "state"
  if damage == "truncate":
    for f in (p for p in state_dir.rglob("*") if p.is_file() and "d" in p.parent.name):
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3])
  elif damage == "drop_metadata":
    (state_dir / "_METADATA").unlink()
  else:
    (state_dir / "manifest.ocdbt").write_bytes(b"garbage")
  step, _, meta = manager.Checkpointer(str(tmp_path), max_to_keep=3).restore_latest(abstract)
  assert step == 1 and meta["step"] == 1
  assert (tmp_path / "2").exists()  # nothing deleted


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_training_past_a_damaged_step_can_save_it_again(setup, tmp_path,
                                                        failed_restores_collected):
  *_, abstract, _, init = setup
  state = init()
  ckpt = manager.Checkpointer(str(tmp_path), max_to_keep=3)
  ckpt.save(1, state, {"step": 1})
  ckpt.save(2, state, {"step": 2})
  ckpt.close()
  (tmp_path / "2" / "state" / "manifest.ocdbt").write_bytes(b"garbage")
  resumed = manager.Checkpointer(str(tmp_path), max_to_keep=3)
  step, state, _ = resumed.restore_latest(abstract, set_aside_damaged=True)
  assert step == 1
  kept = [p.name for p in tmp_path.iterdir() if p.name.startswith("damaged-2-")]
  assert len(kept) == 1 and (tmp_path / kept[0] / "state").exists()  # moved, not deleted
  resumed.save(2, state, {"step": 2})
  resumed.close()
  step, _, meta = manager.Checkpointer(str(tmp_path), max_to_keep=3).restore_latest(abstract)
  assert step == 2 and meta == {"step": 2}


def test_no_checkpoint_restores_to_none(setup, tmp_path):
  abstract = setup[4]
  assert manager.Checkpointer(str(tmp_path), max_to_keep=1).restore_latest(abstract) is None


def test_flat_state_step_equals_the_train_state_step_and_round_trips(setup):
  # The trainer's FlatStateStep must compute exactly the step it wraps, keep
  # every leaf's sharding, and rebuild the same TrainState from its leaves.
  config, mesh, tx, graphdef, _, shardings, init = setup
  lr = optim.learning_rate_schedule(config.optimizer, config.total_steps)
  flat = TrainStep(graphdef, tx, StepSettings(NAMES, (0.0,) * 3), lr, state_shardings=shardings,
                   metrics_sharding=sharding.replicated(mesh))
  batches = (_batch("motion", 4),)
  expected_state, expected_metrics = _step_fn(setup, donate=False)(init(), batches,
                                                                   jax.random.key(0))
  leaves, metrics = flat(flat.flatten(init()), batches, jax.random.key(0))
  state = flat.unflatten(leaves)
  assert jax.tree.structure(state) == jax.tree.structure(expected_state)
  for got, want in zip(_leaves(state), _leaves(expected_state)):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(metrics["loss"], expected_metrics["loss"])
  for leaf, expected in zip(leaves, jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)
  assert int(state.step) == 1 and flat.compilations() == 1
  with pytest.raises(ValueError, match="differs"):
    flat.flatten({"not": "a train state"})
