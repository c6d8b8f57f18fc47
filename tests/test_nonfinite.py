"""Non-finite losses: the injection knob, the 'stop' and 'skip' policies, end to end."""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from cover_jax.train import loop, mixture, nonfinite, optim, state as train_state
from cover_jax.parallel import sharding
from cover_jax.config.validation import ConfigError, validate_config
from cover_jax.train.step import StepSettings, bind
from tests.helpers import assert_same_arrays, checkpoint_arrays, load_config

NAMES = ("appearance", "images", "motion")
CLASSES = {"appearance": 12, "images": 36, "motion": 8}
SEED = 2


@pytest.fixture(scope="module")
def setup():
  config = load_config(arg="tiny=true")
  mesh = sharding.make_mesh(config.mesh_shape)
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  graphdef, _, shardings = train_state.abstract_train_state(config.model, CLASSES, tx, mesh)
  init = lambda: train_state.init_train_state(jax.random.key(0), config.model, CLASSES, tx,
                                              shardings)
  lr = optim.learning_rate_schedule(config.optimizer, config.total_steps)

  def step_fn(policy=None, inject_at=-1):
    settings = StepSettings(NAMES, (0.0,) * 3, skip_nonfinite=policy == "skip",
                            inject_nonfinite_at_step=inject_at)
    step = bind(graphdef, tx, settings, lr)
    return jax.jit(step, out_shardings=(shardings, sharding.replicated(mesh)))
  return init, step_fn


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return ({"video": jnp.asarray(rng.normal(size=(4, 4, 16, 16, 3)), jnp.float32),
           "label": jnp.asarray(rng.integers(0, 8, 4), jnp.int32),
           "dataset_index": jnp.asarray(NAMES.index("motion"), jnp.int32)},)


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _run(step, state, num_steps):
  history = []
  for i in range(num_steps):
    state, metrics = step(state, _batch(i), jax.random.key(0))
    history.append(jax.device_get(metrics))
  return state, history


def test_injection_makes_that_step_nan_in_loss_and_gradient_and_nothing_else(setup):
  init, step_fn = setup
  plain_state, _ = _run(step_fn(), init(), 3)  # built without any nonfinite config
  step = step_fn("stop", inject_at=3)
  state, history = _run(step, init(), 3)
  # Steps before the injected one are bit-identical to a run without the knob.
  for a, b in zip(_leaves(state), _leaves(plain_state)):
    np.testing.assert_array_equal(a, b)
  assert all(np.isfinite(m["loss"]) for m in history)
  state, metrics = step(state, _batch(3), jax.random.key(0))
  assert np.isnan(metrics["loss"]) and np.isnan(metrics["batch_loss"][0])
  assert np.isnan(metrics["grad_norm"])
  assert step._cache_size() == 1  # the step number is traced: no recompilation
  # Under 'stop' the poisoned update goes through (the host stops the run).
  assert any(np.isnan(leaf).any() for leaf in _leaves(state.params))


def test_skip_policy_keeps_params_and_optimizer_state_and_advances_the_step(setup):
  init, step_fn = setup
  step = step_fn("skip", inject_at=2)
  before, _ = _run(step, init(), 2)
  before_leaves = _leaves((before.params, before.opt_state))
  after, metrics = step(before, _batch(2), jax.random.key(0))
  assert np.isnan(metrics["loss"])
  assert int(after.step) == 3
  for a, b in zip(before_leaves, _leaves((after.params, after.opt_state))):
    np.testing.assert_array_equal(a, b)
  # The next step trains normally again.
  later, metrics = step(after, _batch(3), jax.random.key(0))
  assert np.isfinite(metrics["loss"])
  assert not all(np.array_equal(a, b) for a, b in zip(_leaves(after.params),
                                                      _leaves(later.params)))


def _metrics(loss=1.0, grad_norm=1.0):
  return {"batch_loss": np.array([loss]), "grad_norm": np.float32(grad_norm)}


def test_monitor_stop_names_the_step_and_dataset():
  monitor = nonfinite.NonFiniteMonitor(ConfigDict(dict(policy="stop", max_consecutive_skips=3)))
  assert monitor.check(4, ("motion",), _metrics())
  with pytest.raises(nonfinite.NonFiniteLossError, match=r"loss at step 5 on dataset 'motion'"):
    monitor.check(5, ("motion",), _metrics(loss=np.nan))
  with pytest.raises(nonfinite.NonFiniteLossError,
                     match=r"gradient \(norm inf\) at step 6 on dataset 'images'"):
    monitor.check(6, ("images",), _metrics(grad_norm=np.inf))


def test_monitor_skip_counts_and_stops_after_too_many_in_a_row():
  config = ConfigDict(dict(policy="skip", max_consecutive_skips=3))
  monitor = nonfinite.NonFiniteMonitor(config, {"skipped_total": 5, "consecutive": 1})
  assert not monitor.check(10, ("motion",), _metrics(loss=np.nan))
  assert monitor.state() == {"skipped_total": 6, "consecutive": 2}
  assert monitor.check(11, ("motion",), _metrics())
  assert monitor.state() == {"skipped_total": 6, "consecutive": 0}
  assert not monitor.check(12, ("motion",), _metrics(loss=np.inf))
  assert not monitor.check(13, ("motion",), _metrics(loss=np.inf))
  with pytest.raises(nonfinite.NonFiniteLossError, match="3 skipped steps in a row"):
    monitor.check(14, ("motion",), _metrics(grad_norm=np.nan))


@pytest.mark.parametrize("field, value", [("policy", "ignore"), ("max_consecutive_skips", 0),
                                          ("inject_at_step", -5)])
def test_bad_nonfinite_config_is_rejected(field, value):
  config = load_config(**{f"nonfinite.{field}": value})
  with pytest.raises(ConfigError, match=rf"config.nonfinite.{field} = "):
    validate_config(config, num_devices=1)


def _config(data_dir, **overrides):
  return load_config(arg="tiny=true", data_dir=data_dir, total_steps=9, seed=SEED,
                     eval_every=0, **overrides)


def _meta(workdir, step) -> dict:
  return json.loads((pathlib.Path(workdir) / "checkpoints" / str(step) / "meta" / "metadata")
                    .read_text())


def _steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                if p.name.isdigit())


def test_injected_nan_stops_the_run_naming_step_and_dataset(tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir, **{"nonfinite.inject_at_step": 4})
  dataset = mixture.DatasetMixture({n: 1.0 for n in NAMES}, "sample", SEED).datasets_at(4)[0]
  with pytest.raises(loop.NonFiniteLossError,
                     match=rf"non-finite loss at step 4 on dataset '{dataset}'"):
    loop.train_and_evaluate(config, str(tmp_path))
  assert _steps(tmp_path) == [3]  # the last good checkpoint stays the latest


def test_skip_policy_finishes_counts_and_resumes_exactly(tiny_data_dir, tmp_path):
  config = _config(tiny_data_dir, **{"nonfinite.inject_at_step": 4, "nonfinite.policy": "skip"})
  loop.train_and_evaluate(config, str(tmp_path / "straight"))
  assert _meta(tmp_path / "straight", 9)["nonfinite"] == {"skipped_total": 1, "consecutive": 0}
  # Resume from step 6 (after the skip): the counters come back from the meta.
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "9")
  assert _meta(tmp_path / "resumed", 6)["nonfinite"]["skipped_total"] == 1
  loop.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert _meta(tmp_path / "resumed", 9) == _meta(tmp_path / "straight", 9)
  assert_same_arrays(checkpoint_arrays(tmp_path / "resumed", 9),
                     checkpoint_arrays(tmp_path / "straight", 9), "resumed after a skipped step")
