"""What checkpointing every N steps costs the training loop.

Trains a benchmark config (benchmarks/bench_common.py) on a batch already on
the device and saves the train state with the trainer's own Checkpointer
(Orbax, asynchronous, keep-2) every N steps, for several N; a row with
synchronous saves shows what the asynchronous ones hide. Prints a table:
mean step time including saves, its overhead over not saving, and how long the
`save()` call blocks the loop (the device-to-host copy; the writing happens in
a background thread).

  python benchmarks/checkpoint_cost.py                       # bench config, CPU
  python benchmarks/checkpoint_cost.py --config=small --every=0,20,5
  python benchmarks/checkpoint_cost.py --config=B/16 --steps=60   # on an accelerator
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_common, jax_worker
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # cover_jax

import jax  # noqa: E402

import bench_common  # noqa: E402
import jax_worker  # noqa: E402
from cover_jax.checkpoint import manager  # noqa: E402

_ARGS = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--config", default="bench", help=f"one of {sorted(bench_common.CONFIGS)}")
_ARGS.add_argument("--batch", type=int, default=0, help="override the config's batch")
_ARGS.add_argument("--steps", type=int, default=60, help="timed steps per row")
_ARGS.add_argument("--every", default="0,20,10,5,1",
                   help="comma-separated save intervals in steps; 0 = never save")
_ARGS.add_argument("--workdir", default="", help="where checkpoints go (default: a temp dir)")


def run_row(bench: jax_worker.StepBench, every: int, steps: int, directory: str,
            asynchronous: bool) -> dict:
  """Times `steps` steps saving every `every` steps; returns the row's numbers."""
  run_step = bench.run_fns["video"]
  ckpt = manager.Checkpointer(directory, max_to_keep=2, asynchronous=asynchronous)
  save_calls, step_times = [], []
  start = time.perf_counter()
  for step in range(1, steps + 1):
    step_times.append(bench_common.timed(run_step)[0])
    if every and step % every == 0:
      call = time.perf_counter()
      ckpt.save(step, bench.state, {"step": step})
      save_calls.append(time.perf_counter() - call)
  ckpt.close()  # waits for the last write: its cost belongs to this row
  total = time.perf_counter() - start
  return {"every": every, "mode": "async" if asynchronous else "sync",
          "mean_step_s": total / steps, "median_step_s": statistics.median(step_times),
          "save_call_ms": 1e3 * statistics.median(save_calls) if save_calls else 0.0,
          "saves": len(save_calls)}


def state_megabytes(state) -> float:
  return sum(x.nbytes for x in jax.tree.leaves(state)) / 2 ** 20


def format_table(rows: list[dict], baseline_s: float) -> str:
  header = (f"{'save every':>10} {'mode':>5} {'saves':>5} {'mean step (s)':>13} "
            f"{'overhead':>8} {'median step (s)':>15} {'save() blocks (ms)':>18}")
  lines = [header, "-" * len(header)]
  for r in rows:
    every = "never" if not r["every"] else f"{r['every']} steps"
    overhead = r["mean_step_s"] / baseline_s - 1
    lines.append(f"{every:>10} {r['mode']:>5} {r['saves']:>5} {r['mean_step_s']:>13.4f} "
                 f"{overhead:>+8.1%} {r['median_step_s']:>15.4f} {r['save_call_ms']:>18.1f}")
  return "\n".join(lines)


def main(argv=None) -> None:
  args = _ARGS.parse_args(argv)
  intervals = [int(x) for x in args.every.split(",") if x.strip()]
  if not intervals or min(intervals) < 0:
    raise SystemExit(f"--every={args.every!r}: give comma-separated intervals >= 0, e.g. 0,10,1")
  config = bench_common.resolve_config(args.config, args.batch)
  bench = jax_worker.StepBench(config)
  bench.setup("video", config.frames)  # compile + warm-up
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root = args.workdir or tmp
    for i, every in enumerate(intervals):
      rows.append(run_row(bench, every, args.steps, os.path.join(root, f"async-{i}"), True))
    smallest = min((e for e in intervals if e), default=0)
    if smallest:  # what the asynchronous saves hide
      rows.append(run_row(bench, smallest, args.steps, os.path.join(root, "sync"), False))
  baseline = next((r["mean_step_s"] for r in rows if not r["every"]),
                  min(r["median_step_s"] for r in rows))
  print(f"checkpoint cost: config {args.config} (batch {config.batch}, {config.dtype}), "
        f"{args.steps} steps per row, train state {state_megabytes(bench.state):.1f} MB, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}")
  print(format_table(rows, baseline))


if __name__ == "__main__":
  main()
