r"""Where a training step's time goes: a per-category profile table.

Runs one implementation's step (ours, or with --impl=torch the PyTorch
reference) a few times under its own profiler and prints the time per step
spent in each kind of work: matmuls, layout copies, GELU, LayerNorm, the
optimizer, the rest. Run it pinned to one core to see the work itself (with
two threads, XLA:CPU overlaps independent ops and records work done by its
intra-op pool on neither thread):

  taskset -c 0 python benchmarks/profile_step.py --config=bench
  taskset -c 0 python benchmarks/profile_step.py --config=bench --impl=torch   # torch venv
  taskset -c 0 python benchmarks/profile_step.py --config=small --top=25      # + the largest ops

Ours: XLA:CPU thunks from a `jax.profiler` trace, each classified from the
compiled HLO (a fusion that contains a `dot` is a matmul, a copy or transpose
fusion is a layout copy, ...). PyTorch: `torch.profiler` self CPU time per
aten op. docs/performance.md has the tables this printed and what they mean.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

# The workers import cover_jax: from this checkout, installed or not.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_common  # noqa: E402

_ARGS = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--config", default="bench", help="a benchmark config (bench_common.CONFIGS)")
_ARGS.add_argument("--impl", default="jax", choices=("jax", "torch"))
_ARGS.add_argument("--steps", type=int, default=5, help="profiled steps")
_ARGS.add_argument("--top", type=int, default=0, help="also list the N largest single ops")

CATEGORIES = ("matmul", "layout copy", "GELU", "LayerNorm", "softmax", "optimizer",
              "patch embedding", "rest")


def classify_hlo_op(name: str, computation: str) -> str:
  """Category of one XLA:CPU thunk from its name and its fused computation's text.

  `computation` starts with the instruction's own line (its metadata names
  the JAX op it came from): the model's forward and backward ops run under
  the gradient's `jvp`, the optimizer update does not.
  """
  if name.startswith("dot") or " dot(" in computation:
    return "matmul"
  if "jvp(" not in computation.split("\n", 1)[0]:
    return "optimizer"
  # GELU: erf forward; its derivative is exp(-x^2/2) (softmax exponentiates x - max).
  if " erf(" in computation or " erfc(" in computation or (
      " exponential(" in computation and " negate(" in computation):
    return "GELU"
  if name.startswith(("copy", "transpose")) or re.match(r"^(copy|transpose)_", name):
    return "layout copy"
  if " rsqrt(" in computation:
    return "LayerNorm"
  if " exponential(" in computation:
    return "softmax"
  return "rest"


def fused_computations(hlo: str) -> dict[str, str]:
  """Instruction name -> its own line, then the text of the computation it calls."""
  bodies = dict(re.findall(r"\n%([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo, re.S))
  out = {}
  for name, line in re.findall(r"\n\s*(?:ROOT )?%([\w.\-]+) = ([^\n]*)", hlo):
    called = re.search(r"calls=%([\w.\-]+)", line)
    out[name] = " " + line + ("\n" + bodies.get(called.group(1), "") if called else "")
  return out


def profile_jax(config, steps: int):
  """{category: ms per step}, [(op, category, ms per step)] for our step."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax_worker  # pylint: disable=import-outside-toplevel

  bench = jax_worker.StepBench(config, "xla")
  bench.setup("video", config.frames)
  run_step = bench.run_fns["video"]
  computations = fused_computations(bench.hlo_texts["video"])
  for _ in range(2):
    run_step()
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
      run_step()
    jax.profiler.stop_trace()
    trace_file = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(trace_file) as f:
      events = json.load(f)["traceEvents"]
  per_op = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event["name"] in computations:
      per_op[event["name"]] += event["dur"] / 1e3 / steps
  return _totals(per_op, lambda op: classify_hlo_op(op, computations[op]))


def classify_aten_op(name: str) -> str:
  if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
    return "matmul"
  if name in ("aten::copy_", "aten::clone", "aten::contiguous"):
    return "layout copy"
  if "conv" in name or "mkldnn" in name:
    return "patch embedding"
  for key, category in (("gelu", "GELU"), ("layer_norm", "LayerNorm"), ("softmax", "softmax"),
                        ("_foreach", "optimizer"), ("adam", "optimizer")):
    if key in name.lower():
      return category
  return "rest"


def _inside_optimizer_step(event) -> bool:
  """Whether a profiler event ran inside `optimizer.step()` (its record_function)."""
  while event is not None:
    if event.name.startswith("Optimizer.step"):
      return True
    event = event.cpu_parent
  return False


def profile_torch(config, steps: int):
  """{category: ms per step}, [(op, category, ms per step)] for the PyTorch reference.

  Self CPU time per aten op; every op inside `optimizer.step()` counts as
  optimizer (on CPU, AdamW runs per-parameter `mul_`/`lerp_`/`addcdiv_` ops).
  """
  import torch  # pylint: disable=import-outside-toplevel
  import torch_worker  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(len(os.sched_getaffinity(0)))
  step, _ = torch_worker.make_step(config, torch.device("cpu"))
  for _ in range(3):
    step()
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(steps):
      step()
  per_op, categories = collections.Counter(), {}
  for event in prof.events():
    if not event.name.startswith("aten::"):
      continue  # record_function ranges: their ops are counted by their own names
    optimizer = _inside_optimizer_step(event)
    key = ("optimizer: " if optimizer else "") + event.name
    per_op[key] += event.self_cpu_time_total / 1e3 / steps
    categories[key] = "optimizer" if optimizer else classify_aten_op(event.name)
  return _totals(per_op, categories.get)


def _totals(per_op: collections.Counter, classify):
  totals = collections.Counter()
  ops = []
  for op, ms in per_op.items():
    category = classify(op)
    totals[category] += ms
    ops.append((op, category, ms))
  return totals, sorted(ops, key=lambda o: -o[2])


def main() -> None:
  args = _ARGS.parse_args()
  config = bench_common.resolve_config(args.config)
  threads = len(os.sched_getaffinity(0))
  profile = profile_jax if args.impl == "jax" else profile_torch
  start = time.perf_counter()
  totals, ops = profile(config, args.steps)
  total = sum(totals.values())
  print(f"{args.impl} {args.config}: {threads} core(s), {args.steps} profiled steps "
        f"({time.perf_counter() - start:.0f} s with setup); per step:")
  print(f"{'category':16s} {'ms':>9s} {'share':>6s}")
  for category in CATEGORIES:
    print(f"{category:16s} {totals.get(category, 0.0):9.1f} "
          f"{100 * totals.get(category, 0.0) / total:5.1f}%")
  print(f"{'total':16s} {total:9.1f}")
  if args.top:
    print(f"\nlargest {args.top} ops:")
    for op, category, ms in ops[:args.top]:
      print(f"  {op[:40]:40s} {category:16s} {ms:8.2f} ms")


if __name__ == "__main__":
  sys.exit(main())
