"""Benchmark worker for our training step (started by `train_step.py`).

Builds the train state and the jitted step exactly as the trainer does (state
sharded by the logical rules, held as a flat list of arrays and donated,
metrics left on the device), on a synthetic batch that already lives on the
device, and times whole steps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

import bench_common
import memory
from cover_jax.config import defaults
from cover_jax.metrics import flops
from cover_jax.train import optim, state as train_state
from cover_jax.parallel import sharding
from cover_jax.models import timesformer
from cover_jax.train.step import StepSettings, TrainStep

_ARGS = argparse.ArgumentParser(description=__doc__)
_ARGS.add_argument("--config", required=True)
_ARGS.add_argument("--batch", type=int, default=0)
_ARGS.add_argument("--dtype", default="")
_ARGS.add_argument("--attention-impl", default="auto", help="model.attention_impl: auto|xla|cudnn")
_ARGS.add_argument("--image-step", action="store_true", help="also compile and time a T=1 step")
_ARGS.add_argument("--peak-size", type=int, default=0, help="matmul size for the peak (0: auto)")
_ARGS.add_argument("--probe-memory", action="store_true",
                   help="only compile the video step and report its memory (batch sizing)")


def main() -> None:
  args = _ARGS.parse_args()
  channel = bench_common.Channel()
  # Compile times are part of the result: never read them from a cache.
  jax.config.update("jax_enable_compilation_cache", False)
  config = bench_common.resolve_config(args.config, args.batch, args.dtype)
  bench = StepBench(config, args.attention_impl)
  ready = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
           "num_devices": jax.device_count(), "jax": jax.__version__,
           "flax": flax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
           "attention_impl": bench.attention_impl}
  if args.probe_memory:  # the driver sizes the batch from this and ends the worker
    compiled, _ = bench.compile(config.frames)
    channel.send({**ready, **device_memory(), "xla_memory_mb": memory.memory_mb(compiled)})
    return
  ready.update(bench.setup("video", config.frames))
  if args.image_step:
    ready["image"] = bench.setup("image", 1)
  ready.update(device_memory())  # after the warm-up steps: their peak
  ready["peaks"] = matmul_peaks(config.dtype, args.peak_size)
  channel.send(ready)
  channel.serve(bench.run_fns)


def device_memory() -> dict:
  """Device memory in bytes: the peak so far and the allocator's limit (None on CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"peak_bytes": stats.get("peak_bytes_in_use"), "device_bytes": stats.get("bytes_limit")}


class StepBench:
  """One compiled train step per input kind, with its state and batch."""

  def __init__(self, config: bench_common.BenchConfig, attention_impl: str = "auto"):
    self.config = config
    self.model_config = defaults.model_config(
        variant=f"B/{config.patch_size}", width=config.width, depth=config.depth,
        num_heads=config.num_heads, mlp_dim=config.mlp_dim, image_size=config.image_size,
        num_frames=config.frames, dtype=config.dtype, head_init_std=0.02,
        attention_impl=attention_impl)
    self.attention_impl = timesformer.resolve_attention_impl(
        attention_impl, config.dtype, config.width // config.num_heads, 0.0)
    opt_config = defaults.optimizer_config(warmup_steps=10)
    tx = optim.build_optimizer(opt_config, total_steps=1000)
    self.mesh = sharding.make_mesh((-1, 1, 1))
    num_classes = {"bench": config.num_classes}
    graphdef, _, shardings = train_state.abstract_train_state(self.model_config, num_classes,
                                                              tx, self.mesh)
    state = train_state.init_train_state(jax.random.key(0), self.model_config, num_classes,
                                         tx, shardings)
    # As the trainer: uint8 frames from the pipeline, normalised inside the step.
    settings = StepSettings(("bench",), (0.0,), normalise=((0.45,) * 3, (0.225,) * 3))
    self.step = TrainStep(graphdef, tx, settings, optim.learning_rate_schedule(opt_config, 1000),
                          state_shardings=shardings, metrics_sharding=sharding.replicated(self.mesh))
    self.leaves = self.step.flatten(state)  # the state between steps, as the trainer keeps it
    self.rng = jax.random.key(1)
    self.run_fns = {}    # kind -> one timed step
    self.hlo_texts = {}  # kind -> the compiled step's optimised HLO

  @property
  def state(self):
    """The current train state (a TrainState rebuilt from the flat list the step keeps)."""
    return self.step.unflatten(self.leaves)

  def _batch(self, frames: int):

    c = self.config
    rng = np.random.default_rng(frames)
    host = {"video": rng.integers(0, 256, (c.batch, frames, c.image_size, c.image_size, 3),
                                  np.uint8),
            "label": rng.integers(0, c.num_classes, c.batch).astype(np.int32)}
    batch = {k: jax.device_put(v, sharding.batch_sharding(self.mesh, v.ndim))
             for k, v in host.items()}
    batch["dataset_index"] = jax.device_put(np.int32(0), sharding.replicated(self.mesh))
    return (batch,)

  def compile(self, frames: int):
    """(the step compiled for `frames`-frame clips, its batch); sets `compile_s`."""
    batches = self._batch(frames)
    with jax.set_mesh(self.mesh):
      start = time.perf_counter()
      compiled = self.step.jitted.lower(self.leaves, batches, self.rng).compile()
      self.compile_s = time.perf_counter() - start
    return compiled, batches

  def setup(self, kind: str, frames: int) -> dict:
    """Compiles the step for `frames`, warms it up; returns compile time, FLOPs, memory."""
    compiled, batches = self.compile(frames)

    def run_step():
      self.leaves, metrics = compiled(self.leaves, batches, self.rng)
      jax.block_until_ready(metrics)

    for _ in range(3):  # warm-up: allocations, caches, first-touch
      run_step()
    self.run_fns[kind] = run_step
    self.hlo_texts[kind] = compiled.as_text()
    cost = compiled.cost_analysis() or {}
    return {"compile_s": self.compile_s, "frames": frames,
            "analytic_flops": bench_common.step_flops(self.config, frames),
            "xla_dot_flops": flops.hlo_dot_flops(self.hlo_texts[kind]),
            "xla_cost_flops": float(cost.get("flops", 0.0)),
            "xla_memory_mb": memory.memory_mb(compiled)}


def matmul_peaks(dtype: str, size: int) -> dict:
  """Measured matmul FLOP/s of the device: XLA's, and on CPU also NumPy's BLAS."""

  on_cpu = jax.default_backend() == "cpu"
  n = size or (2048 if on_cpu else 8192)
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
  matmul = jax.jit(lambda x: x @ x)
  peaks = {f"xla {dtype} {n}^2": bench_common.best_matmul_rate(
      lambda: matmul(a).block_until_ready(), 2.0 * n ** 3)}
  if on_cpu and dtype == "float32":
    host = np.asarray(a)
    peaks[f"numpy {dtype} {n}^2"] = bench_common.best_matmul_rate(lambda: host @ host,
                                                                  2.0 * n ** 3)
  return peaks


if __name__ == "__main__":
  sys.exit(main())
