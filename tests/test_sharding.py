"""Sharding: the logical-axis rules, and train steps on meshes of 8 fake devices.

The multi-device checks run tests/mesh_check.py in a subprocess: XLA's fake
host devices must be requested before JAX is first imported.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cover_jax.config import validation
from cover_jax.parallel import sharding
from tests.helpers import REPO, fake_devices_env, load_config

_MESHES = ("8,1,1", "4,2,1", "2,2,2", "1,8,1", "1,1,8", "2,2,2+knobs")


@pytest.fixture(scope="module")
def mesh_runs():
  """tests/mesh_check.py's results: one device, then each mesh of 8 fake devices."""
  env = fake_devices_env(8)
  result = subprocess.run([sys.executable, "-m", "tests.mesh_check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", _MESHES)
def test_mesh_matches_one_device(mesh_runs, mesh):
  """A few steps on the mesh give one device's losses, gradient norms and parameters.

  '2,2,2+knobs' adds full remat, scan over layers and 2 micro-batches.
  """
  one, run = mesh_runs["1,1,1"], mesh_runs[mesh]
  np.testing.assert_allclose(run["losses"], one["losses"], rtol=1e-5)
  np.testing.assert_allclose(run["norms"], one["norms"], rtol=1e-4)
  # Summation order differs across devices, and Adam's g/sqrt(v) magnifies
  # float noise in near-zero gradients: compare against the size of the update.
  assert one["moved"] > 1e-4
  assert run["max_diff"] < 0.1 * one["moved"]
  assert run["collectives"]["all-to-all"] == 0


def test_mixup_on_8_devices_matches_one_device(mesh_runs):
  # Mixup pairs each clip with its mirror across the *global* batch: split 8
  # ways, that needs a collective permute, and the losses must not change.
  one, dp = mesh_runs["1,1,1+mixup"], mesh_runs["8,1,1+mixup"]
  assert dp["rows"] == [1]
  assert not np.allclose(one["losses"], mesh_runs["1,1,1"]["losses"])  # mixing changed them
  np.testing.assert_allclose(dp["losses"], one["losses"], rtol=1e-5)
  np.testing.assert_allclose(dp["norms"], one["norms"], rtol=1e-4)
  assert dp["max_diff"] < 0.1 * mesh_runs["1,1,1"]["moved"]  # the size of an update, unmixed
  assert dp["collectives"]["collective-permute"] + dp["collectives"]["all-gather"] >= 1


def _outside_switch(run, op):
  """Collectives of `op` outside the per-dataset head branches (lax.switch)."""
  return run["collectives"][op] - run["collectives"][op + "@branch"]


def test_data_parallel_all_reduces_gradients_once(mesh_runs):
  dp = mesh_runs["8,1,1"]
  assert dp["rows"] == [1] and mesh_runs["1,1,1"]["rows"] == [8]  # batch split 8 ways
  # One (combined) all-reduce of the backbone's gradients; the taken head
  # branch reduces its own gradients and loss. Nothing is gathered.
  assert _outside_switch(dp, "all-reduce") == 1
  for op in ("all-gather", "reduce-scatter", "all-to-all", "collective-permute"):
    assert dp["collectives"][op] == 0, op


def test_fsdp_gathers_parameters_and_shards_the_state(mesh_runs):
  fsdp, dp = mesh_runs["1,8,1"], mesh_runs["8,1,1"]
  assert fsdp["rows"] == [1]  # the batch is split over `fsdp` too
  # 7 weight matrices in a divided block, each gathered for use.
  assert _outside_switch(fsdp, "all-gather") >= 7
  # Gradients are reduce-scattered: on CPU XLA has no reduce-scatter creator
  # pass, so they show as all-reduces followed by a slice per device.
  assert fsdp["collectives"]["reduce-scatter"] + _outside_switch(fsdp, "all-reduce") >= 1
  # Parameters and optimizer state are split 8 ways (a few tiny ones stay whole).
  assert fsdp["state_bytes_per_device"] < 0.2 * dp["state_bytes_per_device"]


def test_tensor_parallel_splits_heads_and_mlp(mesh_runs):
  tp, dp = mesh_runs["1,1,8"], mesh_runs["8,1,1"]
  assert tp["rows"] == [8]  # the batch is whole on every device
  # Megatron-style: activations are all-reduced after attention and MLP;
  # weights are never gathered.
  assert tp["collectives"]["all-reduce"] >= 2
  assert tp["collectives"]["all-gather"] == 0
  # Heads and MLP units are split; embedding-sized vectors are not.
  assert tp["state_bytes_per_device"] < 0.6 * dp["state_bytes_per_device"]


def test_logical_rules_map_batch_to_data_axes():
  assert sharding.logical_to_mesh_spec(("batch", "time", "length", "act_embed")) == P(
      ("data", "fsdp"), None, None, None)
  assert sharding.logical_to_mesh_spec(("embed", "mlp")) == P("fsdp", "tensor")
  with pytest.raises(KeyError, match="no rule"):
    sharding.logical_to_mesh_spec(("batchh",))


def test_size_one_mesh_axes_shard_nothing():
  mesh = sharding.make_mesh((-1, 1, 1))  # one CPU device here
  specs = {"w": P("embed", "mlp"), "x": P("batch", None)}
  shardings = sharding.logical_to_shardings(specs, mesh)
  assert shardings["w"].spec == P(None, None) and shardings["x"].spec == P(None, None)
  assert sharding.replicated(mesh).is_fully_replicated


@pytest.mark.parametrize("shape, devices, expected", [
    ((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 1), 8, (2, 4, 1)), ((1, 1, 1), 1, (1, 1, 1))])
def test_mesh_shape_resolves_minus_one(shape, devices, expected):
  assert sharding.resolve_mesh_shape(shape, devices) == expected


@pytest.mark.parametrize("shape", [(3, -1, 1), (-1, -1, 1), (16, 1, 1), (0, 1, 1)])
def test_impossible_mesh_shapes_are_rejected(shape):
  with pytest.raises(ValueError, match="devices"):
    sharding.resolve_mesh_shape(shape, 8)


def test_constrain_is_a_no_op_outside_a_mesh():
  x = jax.numpy.ones((2, 3))
  assert (sharding.constrain(x, ("batch", "embed")) == x).all()


def test_rules_round_trip_through_the_config_form():
  as_config = sharding.rules_to_config()
  assert as_config["batch"] == "data+fsdp" and as_config["classes"] == ""
  assert sharding.rules_from_config(as_config) == sharding.LOGICAL_AXIS_RULES


def test_config_overrides_the_rules():
  config = load_config(arg="tiny=true")
  config.axis_rules.embed = ""           # FSDP off
  config.axis_rules.mlp = "fsdp+tensor"  # MLP units over two axes
  rules = sharding.rules_from_config(config.axis_rules)
  assert sharding.logical_to_mesh_spec(("embed", "mlp"), rules) == P(None, ("fsdp", "tensor"))
  # Inside a step wrapped with the rules, constraints use them.
  seen = sharding.with_rules(sharding.current_rules, rules)()
  assert dict(seen)["embed"] is None
  assert sharding.current_rules() == sharding.LOGICAL_AXIS_RULES  # and only there


@pytest.mark.parametrize("text", ["fsdpx", "data+data", "data,fsdp"])
def test_bad_axis_rules_are_rejected(text):
  with pytest.raises(ValueError, match="mesh axes"):
    sharding.rules_from_config({"embed": text})


def test_config_errors_for_uneven_splits_and_knobs():
  config = load_config(arg="tiny=true")  # 2 heads
  config.mesh_shape = (1, 1, 8)
  config.axis_rules.embed = "fsdpx"
  config.model.remat = "some"
  config.grad_accum_steps = 3
  with pytest.raises(validation.ConfigError) as error:
    validation.validate_config(config, num_devices=8)
  message = str(error.value)
  assert "config.axis_rules.embed = 'fsdpx'" in message and "Fix: --config.axis_rules.embed=fsdp" in message
  assert "config.model.remat = 'some'" in message
  assert "grad_accum_steps=3" in message and "batch_size=24" in message
  config.axis_rules.embed, config.model.remat, config.grad_accum_steps = "fsdp", "full", 1
  with pytest.raises(validation.ConfigError, match=r"has 2 along 'heads', split over "
                     r"tensor \(8 ways\)"):
    validation.validate_config(config, num_devices=8)
  config.mesh_shape = (4, 1, 2)
  validation.validate_config(config, num_devices=8)
