"""Sharding: the logical-axis rules, and a data-parallel step over 8 fake devices.

The multi-device check runs in a subprocess: XLA's fake host devices must be
requested before JAX is first imported.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cover_jax import sharding
from tests.helpers import REPO

_EIGHT_DEVICE_STEP = textwrap.dedent("""
    import json
    import jax, numpy as np
    from flax import nnx
    from cover_jax import optim, sharding, train_state
    from cover_jax.train_step import HeadSettings, bind_train_step
    from tests.helpers import load_config

    assert jax.device_count() == 8, jax.devices()
    config = load_config(arg="tiny=true")
    classes = {"appearance": 12, "images": 36, "motion": 8}
    names = tuple(sorted(classes))
    tx = optim.build_optimizer(config.optimizer, config.total_steps)
    rng = np.random.default_rng(0)
    host_batch = {"video": rng.normal(size=(8, 4, 16, 16, 3)).astype(np.float32),
                  "label": rng.integers(0, 8, 8).astype(np.int32)}

    def one_step(devices):
      mesh = sharding.make_mesh((-1, 1, 1), devices)
      graphdef, _, shardings = train_state.abstract_train_state(config.model, classes, tx, mesh)
      state = train_state.init_train_state(jax.random.key(0), config.model, classes, tx,
                                           shardings)
      step = jax.jit(bind_train_step(graphdef, tx, HeadSettings(names, (0.1,) * 3), (1.0,),
                                     optim.learning_rate_schedule(config.optimizer, 6)),
                     out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
      batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
               for k, v in host_batch.items()}
      batch["dataset_index"] = jax.device_put(np.int32(names.index("motion")),
                                              sharding.replicated(mesh))
      init = nnx.to_pure_dict(jax.device_get(state.params))
      losses, grad_norms = [], []
      with jax.set_mesh(mesh):
        for _ in range(3):  # step 0 has lr 0 (warm-up); later steps move the weights
          state, metrics = step(state, (batch,), jax.random.key(1))
          losses.append(float(metrics["loss"]))
          grad_norms.append(float(metrics["grad_norm"]))
      shard_rows = sorted({s.data.shape[0] for s in batch["video"].addressable_shards})
      params = nnx.to_pure_dict(jax.device_get(state.params))
      moved = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                               params, init)))
      return params, losses, grad_norms, shard_rows, moved

    params8, losses8, norms8, rows8, moved8 = one_step(jax.devices())
    params1, losses1, norms1, rows1, _ = one_step(jax.devices()[:1])
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                         params8, params1))
    print(json.dumps(dict(losses8=losses8, losses1=losses1, norms8=norms8, norms1=norms1,
                          rows8=rows8, rows1=rows1, max_diff=max(diffs), moved=moved8)))
""")


def test_data_parallel_step_on_8_devices_matches_one_device():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  result = subprocess.run([sys.executable, "-c", _EIGHT_DEVICE_STEP], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["rows8"] == [1] and out["rows1"] == [8]  # the batch really is split 8 ways
  np.testing.assert_allclose(out["losses8"], out["losses1"], rtol=1e-5)
  np.testing.assert_allclose(out["norms8"], out["norms1"], rtol=1e-4)
  # Summation order differs across devices, and Adam's g/sqrt(v) magnifies
  # float noise in near-zero gradients: compare against the size of the update.
  assert out["moved"] > 1e-4
  assert out["max_diff"] < 0.1 * out["moved"]


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
