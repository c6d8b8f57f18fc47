"""Memory knobs: remat policies, scan over layers, gradient accumulation.

Each knob must leave the mathematics unchanged (same loss and gradients as the
plain model, up to float order); remat must also lower the compiled step's
temporary memory. Scanned checkpoints convert to per-block ones and back.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cover_jax.train import grad_accum
from cover_jax.checkpoint import resume_checks
from cover_jax.models import block_stack, cover
from tests.helpers import load_config

CLASSES = {"motion": 8}


def _model_config(**knobs):
  config = load_config(arg="tiny=true")
  config.model.update(depth=2, **knobs)
  return config.model


def _video(batch=4):
  return jax.random.normal(jax.random.key(0), (batch, 4, 16, 16, 3))


def _params(model_config, like=None):
  """(graphdef, params) of a tiny CoVeR; `like`: per-block params to use (stacked if scanned)."""
  model = cover.build_model(model_config, CLASSES, nnx.Rngs(params=0))
  graphdef, params = nnx.split(model, nnx.Param)
  if like is not None:
    tree = block_stack.stack_blocks(like) if model_config.scan_layers else like
    nnx.replace_by_pure_dict(params, tree)
  return graphdef, params


def _compiled_loss_and_grads(graphdef, params):
  def loss(params):
    model = nnx.merge(graphdef, params)
    return jnp.mean(model(_video(), "motion") ** 2)
  compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  return compiled, compiled(params)


@pytest.fixture(scope="module")
def baseline():
  graphdef, params = _params(_model_config())
  _, (loss, grads) = _compiled_loss_and_grads(graphdef, params)
  return nnx.to_pure_dict(params), loss, nnx.to_pure_dict(grads)


@pytest.mark.parametrize("remat, scan", [("dots", False), ("none", True), ("full", True)])
def test_knobs_keep_loss_and_gradients(baseline, remat, scan):
  params0, loss0, grads0 = baseline
  graphdef, params = _params(_model_config(remat=remat, scan_layers=scan), like=params0)
  _, (loss, grads) = _compiled_loss_and_grads(graphdef, params)
  grads = nnx.to_pure_dict(grads)
  if scan:
    grads = block_stack.unstack_blocks(grads)
  np.testing.assert_allclose(loss, loss0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads, grads0)


def test_full_remat_lowers_temporary_memory():
  """Scanned blocks: remat keeps only each block's input for the backward pass.

  (Unscanned, XLA:CPU schedules the recomputation early and keeps everything,
  so on CPU remat only shows with scan_layers; see the memory knobs in docs/scaling.md.)
  """
  temp = {}
  for remat in ("none", "full"):
    graphdef, params = _params(_model_config(remat=remat, scan_layers=True))
    compiled, _ = _compiled_loss_and_grads(graphdef, params)
    temp[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temp["full"] < 0.6 * temp["none"]


def test_scanned_parameters_are_stacked_and_convert_back():
  _, scanned = _params(_model_config(scan_layers=True))
  stacked = nnx.to_pure_dict(scanned)
  kernel = stacked["backbone"]["blocks"]["attn"]["qkv_kernel"]
  assert kernel.shape[0] == 2  # depth
  spec = nnx.get_partition_spec(scanned)["backbone"]["blocks"]["attn"]["qkv_kernel"].get_value()
  assert spec[0] == "layers"
  unstacked = block_stack.unstack_blocks(stacked)
  assert sorted(unstacked["backbone"]["blocks"]) == [0, 1]
  np.testing.assert_array_equal(unstacked["backbone"]["blocks"][1]["attn"]["qkv_kernel"],
                                kernel[1])
  restacked = block_stack.stack_blocks(unstacked)
  jax.tree.map(np.testing.assert_array_equal, restacked, stacked)
  # Digit-string block keys (as restored from a checkpoint) stack the same way.
  as_strings = dict(unstacked["backbone"]["blocks"])
  as_strings = {str(k): v for k, v in as_strings.items()}
  jax.tree.map(np.testing.assert_array_equal,
               block_stack.stack_blocks({"blocks": as_strings})["blocks"],
               stacked["backbone"]["blocks"])


def test_micro_batches_take_interleaved_rows():
  x = jnp.arange(8)
  np.testing.assert_array_equal(grad_accum.split_micro_batches(x, 2), [[0, 2, 4, 6],
                                                                       [1, 3, 5, 7]])
  np.testing.assert_array_equal(grad_accum.split_micro_batches(jnp.int32(3), 2), [3, 3])
  with pytest.raises(ValueError, match="equal micro-batches"):
    grad_accum.split_micro_batches(x, 3)


def test_gradient_accumulation_matches_the_whole_batch():
  """Mean loss, aux and gradients over 4 micro-batches = those of the whole batch."""
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(8, 5)).astype(np.float32),
           "y": rng.normal(size=(8,)).astype(np.float32), "index": np.int32(2)}
  params = {"w": jnp.asarray(rng.normal(size=(5,)), jnp.float32)}

  def loss_fn(params, batch, rng):
    del rng
    error = jnp.tanh(batch["x"] @ params["w"]) * batch["index"] - batch["y"]
    return jnp.mean(error ** 2), {"mean_abs": jnp.mean(jnp.abs(error))}

  whole = jax.jit(grad_accum.value_and_grad(loss_fn, 1))(params, batch, jax.random.key(0))
  micro = jax.jit(grad_accum.value_and_grad(loss_fn, 4))(params, batch, jax.random.key(0))
  # Float32 sums in another order: a few 1e-7 apart; a wrong mean or a lost
  # micro-batch is off by far more.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), micro,
               whole)


def test_resuming_with_the_other_block_layout_is_refused(tmp_path):
  meta = tmp_path / "4" / "meta"
  meta.mkdir(parents=True)
  (meta / "metadata").write_text(json.dumps(
      {"step": 4, "config": json.dumps({"model": {"scan_layers": True}})}))
  resume_checks.check_checkpoint_layout(str(tmp_path), True)
  with pytest.raises(resume_checks.LayoutMismatchError,
                     match="saved with model.scan_layers=True, but this run has False"):
    resume_checks.check_checkpoint_layout(str(tmp_path), False)
