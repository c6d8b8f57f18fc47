"""Mixup and cutmix in the train step (mixup.py)."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cover_jax.config import defaults
from cover_jax.train import loop, mixup, optim
from cover_jax.parallel import sharding
from cover_jax.train.step import StepSettings, bind
from tests.helpers import assert_same_arrays, checkpoint_arrays, load_config
from tests.test_train_step import CLASSES, NAMES, _batch, _leaves, setup  # noqa: F401


def _settings(mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0, switch_prob=0.5, only=None):
  """The same settings for every dataset, or only for dataset `only` (others off)."""
  on = defaults.augment_config(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                                      mix_prob=mix_prob, switch_prob=switch_prob)
  off = defaults.augment_config()
  return mixup.settings_from_configs(on if only in (None, n) else off for n in NAMES)


def _distinct_batch(dataset="motion", batch=4, frames=2, size=16):
  """Example i is the constant i + 1, so every pixel says where it came from."""
  video = jnp.broadcast_to(jnp.arange(1, batch + 1, dtype=jnp.float32)[:, None, None, None, None],
                           (batch, frames, size, size, 3))
  return {"video": video, "label": jnp.arange(batch, dtype=jnp.int32),
          "dataset_index": jnp.asarray(NAMES.index(dataset), jnp.int32)}


@jax.jit
def _mix_jit(batch, key, table):
  # The settings enter as arrays: one compilation serves every setting tested.
  return mixup.mix_batch(batch, key, mixup.MixupSettings(*table))


def _mix(settings, seed, batch=None):
  table = tuple(jnp.asarray(v, jnp.float32) for v in (
      settings.mixup_alpha, settings.cutmix_alpha, settings.mix_prob, settings.switch_prob))
  return _mix_jit(batch or _distinct_batch(), jax.random.key(seed), table)


def test_soft_targets_sum_to_one_and_mix_the_smoothed_labels():
  labels, partners = jnp.array([0, 2, 1]), jnp.array([1, 2, 3])
  weight = jnp.array([0.7, 0.5, 1.0])
  targets = np.asarray(mixup.soft_targets(labels, partners, weight, 4, 0.2))
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(targets[0], [0.7 * 0.85 + 0.3 * 0.05, 0.3 * 0.85 + 0.7 * 0.05,
                                          0.05, 0.05], rtol=1e-6)
  np.testing.assert_allclose(targets[1], [0.05, 0.05, 0.85, 0.05], rtol=1e-6)
  np.testing.assert_array_equal(mixup.dominant_label(labels, partners, weight), [0, 2, 1])


def test_mixup_blends_each_example_with_its_mirror():
  for seed in range(5):
    out = _mix(_settings(mixup_alpha=0.8), seed)
    lam = float(out["mix_weight"][0])
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(out["mix_weight"], lam)
    # Example 0 (value 1) with example 3 (value 4); labels likewise mirrored.
    np.testing.assert_allclose(out["video"][0], lam * 1 + (1 - lam) * 4, rtol=1e-5)
    np.testing.assert_array_equal(out["label_mix"], [3, 2, 1, 0])


def test_cutmix_box_area_matches_lambda_and_is_the_same_for_every_frame():
  lams = []
  for seed in range(8):
    out = _mix(_settings(cutmix_alpha=1.0), seed)
    video, lam = np.asarray(out["video"]), float(out["mix_weight"][0])
    pasted = video[0] == 4.0  # pixels of example 0 taken from example 3
    assert np.isin(video[0], [1.0, 4.0]).all()
    np.testing.assert_allclose(1.0 - pasted.mean(), lam, atol=1e-6)
    for t in range(1, video.shape[1]):
      np.testing.assert_array_equal(pasted[t], pasted[0])
    np.testing.assert_array_equal(video[1] == 3.0, pasted)  # one box for the whole batch
    lams.append(lam)
  assert min(lams) < 0.9 and len(set(lams)) > 4


def test_switch_prob_chooses_between_mixup_and_cutmix():
  kinds = set()
  for seed in range(12):
    video = np.asarray(_mix(_settings(mixup_alpha=1.0, cutmix_alpha=1.0), seed)["video"][0])
    kinds.add("cutmix" if np.isin(video, [1.0, 4.0]).all() else "mixup")
  assert kinds == {"mixup", "cutmix"}
  only_cutmix = _settings(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=1.0)
  for seed in range(4):
    assert np.isin(np.asarray(_mix(only_cutmix, seed)["video"]), [1.0, 2.0, 3.0, 4.0]).all()


def test_settings_are_picked_by_the_traced_dataset_index():
  settings = _settings(mixup_alpha=1.0, only="motion")
  batch = _distinct_batch("motion")
  mixed = _mix(settings, 0, batch)
  assert float(mixed["mix_weight"][0]) < 1.0
  appearance = jnp.asarray(NAMES.index("appearance"), jnp.int32)
  plain = _mix(settings, 0, dict(batch, dataset_index=appearance))
  np.testing.assert_array_equal(plain["video"], batch["video"])  # bit-identical
  np.testing.assert_array_equal(plain["mix_weight"], 1.0)
  never = _mix(_settings(mixup_alpha=1.0, mix_prob=0.0), 0, batch)
  np.testing.assert_array_equal(never["video"], batch["video"])


def test_mixing_is_deterministic_per_rng():
  settings = _settings(mixup_alpha=0.8, cutmix_alpha=1.0)
  a, b, c = (_mix(settings, s) for s in (1, 1, 2))
  np.testing.assert_array_equal(a["video"], b["video"])
  assert not np.array_equal(a["video"], c["video"])


_STEPS = {}  # (settings, micro_batches) -> jitted step: compile each once per session


def _step(setup, settings, micro_batches=1):  # noqa: F811
  config, mesh, tx, graphdef, _, shardings, _ = setup
  key = (settings, micro_batches)
  if key not in _STEPS:
    lr = optim.learning_rate_schedule(config.optimizer, config.total_steps)
    step_settings = StepSettings(NAMES, (0.1,) * 3, micro_batches=micro_batches, mixup=settings)
    _STEPS[key] = jax.jit(bind(graphdef, tx, step_settings, lr),
                          out_shardings=(shardings, sharding.replicated(mesh)))
  return _STEPS[key]


def _two_steps(setup, settings, seed=0, micro_batches=1):  # noqa: F811
  step, state = _step(setup, settings, micro_batches), setup[-1]()
  batch = (_batch("motion", 4),)
  state, _ = step(state, batch, jax.random.key(seed))  # lr(0) = 0: warm-up
  state, metrics = step(state, batch, jax.random.key(seed))
  return _leaves(state.params), jax.device_get(metrics)


def test_mixup_off_is_the_step_without_it(setup):  # noqa: F811
  without, metrics = _two_steps(setup, None)
  off, off_metrics = _two_steps(setup, _settings())
  assert all(np.array_equal(x, y) for x, y in zip(without, off))
  np.testing.assert_array_equal(metrics["loss"], off_metrics["loss"])


def test_train_step_with_mixup_and_cutmix_is_finite_and_deterministic(setup):  # noqa: F811
  settings = _settings(mixup_alpha=0.8, cutmix_alpha=1.0)
  params, metrics = _two_steps(setup, settings)
  again, _ = _two_steps(setup, settings)
  other_rng, _ = _two_steps(setup, settings, seed=1)
  without, _ = _two_steps(setup, None)
  assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["batch_top1"][0] <= 1.0
  assert all(np.array_equal(x, y) for x, y in zip(params, again))
  # Zero heads give the same loss for any targets at first; the gradients differ.
  assert not all(np.array_equal(x, y) for x, y in zip(params, other_rng))
  assert not all(np.array_equal(x, y) for x, y in zip(params, without))


@pytest.mark.parametrize("micro_batches", [2])
def test_mixup_with_gradient_accumulation(setup, micro_batches):  # noqa: F811
  # The whole batch is mixed before it is split: same result up to float order.
  settings = _settings(mixup_alpha=0.8)
  whole, metrics = _two_steps(setup, settings)
  split, split_metrics = _two_steps(setup, settings, micro_batches=micro_batches)
  np.testing.assert_allclose(split_metrics["loss"], metrics["loss"], rtol=1e-5)
  for x, y in zip(whole, split):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_training_with_every_augmentation_resumes_bit_identically(tiny_data_dir, tmp_path):
  # tf.data augmentation and in-step mixing both derive from (seed, position):
  # a run resumed from step 3 ends where an uninterrupted one does.
  augments = {
      "appearance": dict(kind="scale_jitter", short_side_range=(16, 24), randaugment_layers=2,
                         mixup_alpha=0.8, cutmix_alpha=1.0),
      "motion": dict(kind="random_resized_crop", area_range=(0.3, 1.0), cutmix_alpha=1.0),
      "images": dict(kind="inception", randaugment_layers=1, mixup_alpha=0.2),
  }
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir, total_steps=6, seed=2,
                       eval_every=0, log_every=3)
  for name, fields in augments.items():
    config.datasets[name].augment.update(fields)
  straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
  assert all(np.isfinite(r["video_loss"]) for r in straight.results.values())
  interrupted = tmp_path / "interrupted"
  shutil.copytree(tmp_path / "straight", interrupted)
  shutil.rmtree(interrupted / "checkpoints" / "6")
  loop.train_and_evaluate(config, str(interrupted))
  assert_same_arrays(checkpoint_arrays(interrupted, 6), checkpoint_arrays(tmp_path / "straight", 6))
