"""The benchmark's FLOP counter (cover_jax/metrics/flops.py) and an end-to-end smoke run.

The analytic matmul count is checked against the dots XLA actually compiles
for a whole train step (forward, backward, optimizer), exactly. The smoke run
starts benchmarks/train_step.py on the `tiny` config; it times nothing that a
test asserts on (speed is measured by the benchmark, never by tests).
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cover_jax.config import defaults
from cover_jax.metrics import flops
from cover_jax.train import optim, state as train_state
from cover_jax.parallel import sharding
from cover_jax.train.step import StepSettings, bind
from tests.helpers import REPO

TINY = dict(width=32, depth=2, num_heads=2, mlp_dim=64, image_size=32, num_frames=4)
BATCH, PATCH, CLASSES = 2, 8, 10


def _compiled_train_step(attention_type: str, frames: int):
  model_config = defaults.model_config(variant=f"Mu/{PATCH}", attention_type=attention_type,
                                              **TINY)
  opt_config = defaults.optimizer_config(warmup_steps=2)
  tx = optim.build_optimizer(opt_config, total_steps=10)
  mesh = sharding.make_mesh((-1, 1, 1))
  graphdef, abstract, _ = train_state.abstract_train_state(model_config, {"x": CLASSES}, tx, mesh)
  step = bind(graphdef, tx, StepSettings(("x",), (0.0,)), optim.learning_rate_schedule(opt_config, 10))
  size = TINY["image_size"]
  batch = {"video": jax.ShapeDtypeStruct((BATCH, frames, size, size, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32),
           "dataset_index": jax.ShapeDtypeStruct((), jnp.int32)}
  return jax.jit(step).lower(abstract, (batch,), jax.random.key(0)).compile()


def _shape(attention_type: str, frames: int) -> flops.StepShape:
  return flops.StepShape(width=TINY["width"], depth=TINY["depth"], mlp_dim=TINY["mlp_dim"],
                         patch_size=PATCH, batch=BATCH, frames=frames,
                         height=TINY["image_size"], width_px=TINY["image_size"],
                         num_classes=CLASSES, attention_type=attention_type)


def test_analytic_flops_equal_the_dots_xla_compiles_for_a_train_step():
  compiled = _compiled_train_step("divided_space_time", 4)
  analytic = flops.train_step_flops(_shape("divided_space_time", 4))
  assert flops.hlo_dot_flops(compiled.as_text()) == analytic
  # XLA's own cost analysis adds the elementwise work (norms, softmax, Adam...).
  assert 1.0 < compiled.cost_analysis()["flops"] / analytic < 1.3


def test_image_step_computes_no_one_frame_temporal_q_and_k():
  # With T=1 the temporal attention's output is its value projection (softmax
  # over one token is exactly 1): the step runs no q/k projection and no 1x1
  # attention, and the analytic count says so.
  shape = _shape("divided_space_time", 1)
  compiled = _compiled_train_step("divided_space_time", 1)
  assert flops.hlo_dot_flops(compiled.as_text()) == flops.train_step_flops(shape)


@pytest.mark.parametrize("attention_type", ["joint_space_time", "space_only"])
def test_joint_and_space_only_steps_also_run_the_last_blocks_patch_mlp(attention_type):
  # These paths run the last block's MLP on all tokens in one matmul, so XLA
  # cannot drop the rows that never reach the cls output: the analytic count
  # (needed FLOPs) is lower by exactly that MLP, forward and backward.
  shape = _shape(attention_type, 4)
  patch_tokens = shape.patches * shape.frames
  dead_mlp = 3 * BATCH * 2 * (2 * patch_tokens * TINY["width"] * TINY["mlp_dim"])
  compiled = _compiled_train_step(attention_type, 4)
  assert flops.hlo_dot_flops(compiled.as_text()) == flops.train_step_flops(shape) + dead_mlp


def test_hlo_dot_flops_counts_batched_and_plain_dots():
  a = jax.ShapeDtypeStruct((3, 5, 7), jnp.float32)
  b = jax.ShapeDtypeStruct((3, 7, 11), jnp.float32)
  c = jax.ShapeDtypeStruct((11, 13), jnp.float32)
  compiled = jax.jit(lambda a, b, c: jnp.einsum("bmk,bkn->bmn", a, b) @ c).lower(a, b, c).compile()
  assert flops.hlo_dot_flops(compiled.as_text()) == 2 * 3 * 5 * 7 * 11 + 2 * 3 * 5 * 11 * 13


def test_benchmark_script_runs_end_to_end(tmp_path):
  out = tmp_path / "result.json"
  proc = subprocess.run(
      [sys.executable, "benchmarks/train_step.py", "--configs=tiny", "--rounds=2", "--steps=2",
       f"--json={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "cover_jax" in proc.stdout and "MFU" in proc.stdout and "image step (T=1)" in proc.stdout
  (summary,) = json.loads(out.read_text())
  rows = {(r["impl"], r["kind"]): r for r in summary["rows"]}
  assert set(rows) == {("cover_jax", "video"), ("cover_jax", "image")}
  video = rows[("cover_jax", "video")]
  assert video["steps"] == 4 and video["frames"] == 2 and rows[("cover_jax", "image")]["frames"] == 1
  assert video["median_s"] > 0 and video["compile_s"] > 0 and 0 < video["mfu"] < 1
  ready = summary["ready"]["cover_jax"]
  assert ready["xla_dot_flops"] == ready["analytic_flops"] == video["flops"]
  assert summary["peaks"] and summary["peak"] in summary["peaks"]


def test_benchmark_rejects_accelerator_configs_on_cpu():
  # conftest sets JAX_PLATFORMS=cpu, which the script's subprocesses inherit.
  proc = subprocess.run([sys.executable, "benchmarks/train_step.py", "--configs=B/16"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "accelerators only" in proc.stderr


def test_profile_classifies_matmuls_copies_gelu_and_the_optimizer():
  sys.path.insert(0, str(REPO / "benchmarks"))
  import profile_step  # pylint: disable=import-outside-toplevel

  def loss(w, x):
    h = jnp.einsum("md,df->mf", x.T.reshape(-1, x.shape[0]), w)  # a transposed copy, then a dot
    return jnp.sum(jax.lax.erf(h))

  def train(w, x):  # an update outside the gradient, as the optimizer's
    value, grad = jax.value_and_grad(loss)(w, x)
    return w - 0.1 * jnp.sqrt(jnp.abs(grad)) * value

  x, w = jnp.ones((16, 8)), jnp.ones((16, 4))
  computations = profile_step.fused_computations(jax.jit(train).lower(w, x).compile().as_text())
  categories = {profile_step.classify_hlo_op(name, text) for name, text in computations.items()}
  assert {"matmul", "GELU", "optimizer"} <= categories
  assert profile_step.classify_aten_op("aten::addmm") == "matmul"
  assert profile_step.classify_aten_op("aten::copy_") == "layout copy"
  assert profile_step.classify_aten_op("aten::_foreach_mul_") == "optimizer"


def test_profile_script_prints_a_table_for_our_step():
  proc = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--config=tiny",
                         "--steps=1", "--top=3"], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = dict(line.split()[:2] for line in proc.stdout.splitlines()
              if line.split() and line.split()[0] in ("matmul", "optimizer", "total"))
  assert float(rows["matmul"]) > 0 and float(rows["optimizer"]) > 0 and float(rows["total"]) > 0
  assert "largest 3 ops" in proc.stdout


def test_memory_benchmark_refuses_unknown_knob_names():
  result = subprocess.run([sys.executable, "benchmarks/memory.py", "--knobs=baseline",
                           "--models=small", "--steps=0"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode != 0
  assert "unknown knob(s) ['baseline']" in result.stderr and "baseline (f32)" in result.stderr
