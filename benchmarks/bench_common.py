"""What both benchmark workers share: the configs and the worker protocol.

Imports neither JAX nor torch (`step_flops` imports the pure-Python
cover_jax.metrics.flops): the driver and the PyTorch worker may run in an
interpreter without JAX.

Protocol. The driver (`train_step.py`) starts one long-lived worker process per
implementation. A worker builds and warms up its step, writes one JSON line
("ready": compile time, matmul peak, ...) and then answers commands, one JSON
line each, read from stdin: {"cmd": "time", "kind": "video"|"image",
"steps": K} -> {"times": [wall seconds per step], "cpu_times": [CPU seconds]};
{"cmd": "quit"}. Only the
driver's current worker computes; the other waits on stdin, so the two never
fight over cores.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """One benchmark configuration: a TimeSformer (divided space-time) and a batch."""
  image_size: int
  patch_size: int
  frames: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  num_classes: int
  batch: int
  dtype: str = "float32"
  accelerator_only: bool = False


CONFIGS = {
    # Seconds-long smoke run (tests).
    "tiny": BenchConfig(image_size=32, patch_size=8, frames=2, width=32, depth=1, num_heads=2,
                        mlp_dim=64, num_classes=10, batch=2),
    # configs/demo.py's model and video batch (the README's main job).
    "demo": BenchConfig(image_size=32, patch_size=8, frames=4, width=64, depth=4, num_heads=4,
                        mlp_dim=256, num_classes=12, batch=32),
    "bench": BenchConfig(image_size=64, patch_size=16, frames=8, width=192, depth=4, num_heads=3,
                         mlp_dim=768, num_classes=10, batch=8),
    "small": BenchConfig(image_size=112, patch_size=16, frames=8, width=384, depth=6, num_heads=6,
                         mlp_dim=1536, num_classes=10, batch=4),
    # TimeSformer-B/16, 8 x 224^2 (the paper's default), Kinetics-400 head.
    "B/16": BenchConfig(image_size=224, patch_size=16, frames=8, width=768, depth=12,
                        num_heads=12, mlp_dim=3072, num_classes=400, batch=32, dtype="bfloat16",
                        accelerator_only=True),
    "L/16": BenchConfig(image_size=224, patch_size=16, frames=8, width=1024, depth=24,
                        num_heads=16, mlp_dim=4096, num_classes=400, batch=16, dtype="bfloat16",
                        accelerator_only=True),
}


def resolve_config(name: str, batch: int = 0, dtype: str = "") -> BenchConfig:
  if name not in CONFIGS:
    raise SystemExit(f"unknown benchmark config {name!r}: choose from {sorted(CONFIGS)}")
  config = CONFIGS[name]
  return dataclasses.replace(config, batch=batch or config.batch, dtype=dtype or config.dtype)


def step_flops(config: BenchConfig, frames: int) -> int:
  """Analytic model FLOPs of one train step of `config` on `frames`-frame clips."""
  from cover_jax.metrics import flops  # pylint: disable=import-outside-toplevel  (pure Python)
  return flops.train_step_flops(flops.StepShape(
      width=config.width, depth=config.depth, mlp_dim=config.mlp_dim,
      patch_size=config.patch_size, batch=config.batch, frames=frames,
      height=config.image_size, width_px=config.image_size, num_classes=config.num_classes))


def cpu_affinity(threads: int) -> list[int] | None:
  """The first `threads` cores this process may use (None: leave as is).

  The driver pins each worker to them before it starts: XLA:CPU sizes its
  thread pool by the cores a process may run on, and PyTorch is told the same
  count, so both sides get the same cores.
  """
  if threads <= 0 or not hasattr(os, "sched_getaffinity"):
    return None
  allowed = sorted(os.sched_getaffinity(0))
  if threads > len(allowed):
    raise SystemExit(f"--threads={threads} but only {len(allowed)} cores are available")
  return allowed[:threads]


class Channel:
  """The worker's end of the protocol; library output goes to stderr."""

  def __init__(self):
    # Keep the real stdout for protocol lines, and send everything else that
    # writes to fd 1 (library banners, warnings) to stderr.
    self._out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

  def send(self, message: dict) -> None:
    self._out.write(json.dumps(message) + "\n")

  def serve(self, step_fns: dict) -> None:
    """Answers 'time' commands with `step_fns[kind]()` timings until 'quit'."""
    for line in sys.stdin:
      command = json.loads(line)
      if command["cmd"] == "quit":
        return
      run_step = step_fns[command["kind"]]
      walls, cpus = zip(*[timed(run_step) for _ in range(command["steps"])])
      self.send({"times": walls, "cpu_times": cpus})


def timed(fn) -> tuple[float, float]:
  """(wall-clock, CPU) seconds of fn().

  CPU time is summed over the process's threads: less sensitive than wall time
  to other processes on a shared machine (useful to compare changes there),
  but it also counts threads that spin while waiting.
  """
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - wall, time.process_time() - cpu


def best_matmul_rate(run_matmul, flops: float, repeats: int = 10) -> float:
  """FLOP/s of the fastest of `repeats` calls of a (blocking) matmul."""
  run_matmul()
  return flops / min(timed(run_matmul)[0] for _ in range(repeats))
