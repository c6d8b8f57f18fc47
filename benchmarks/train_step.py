r"""Training-step benchmark: our step vs. the PyTorch TimeSformer, FLOPs and MFU.

For each config: compile time, median step time after warm-up (with the 10th
to 90th percentile), clips/s, model FLOPs per step (analytic matmul count,
cross-checked against the FLOPs of the dots in XLA's optimised HLO and against
XLA's cost analysis), achieved FLOP/s and MFU against the matmul peak measured
on the same device in the same run. With --compare-torch the PyTorch reference
(HuggingFace `TimesformerForVideoClassification`) is timed at the same config;
the two run in their own processes, pinned to the same cores, and take turns:
round after round, one times a few steps while the other waits. "CPU ms" is
the median CPU time of a step summed over the worker's threads: on a busy
machine it moves less than wall time (but it counts threads spinning idle).

  python benchmarks/train_step.py --compare-torch           # CPU: bench and small, 2 threads
  python benchmarks/train_step.py --configs=B/16            # GPU/TPU: B/16 8x224 bf16
  python benchmarks/train_step.py --configs=tiny --rounds=1 --steps=2   # smoke run

Configs (`bench_common.CONFIGS`): bench (64^2, 8 frames, width 192, 4 layers,
batch 8), small (112^2, 8 frames, width 384, 6 layers, batch 4), B/16 (224^2,
8 frames, ViT-B, batch 32, bfloat16; accelerators only), tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys

import bench_common

REPO = pathlib.Path(__file__).resolve().parent.parent

_ARGS = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
_ARGS.add_argument("--configs", default="auto",
                   help="comma-separated config names; auto: bench,small on CPU, B/16 elsewhere")
_ARGS.add_argument("--compare-torch", action="store_true",
                   help="also time the PyTorch reference (needs the [bench] extra)")
_ARGS.add_argument("--torch-python", default=sys.executable,
                   help="interpreter with torch + transformers for the PyTorch worker")
_ARGS.add_argument("--rounds", type=int, default=5, help="alternation rounds")
_ARGS.add_argument("--steps", type=int, default=10, help="timed steps per round and side")
_ARGS.add_argument("--threads", type=int, default=2,
                   help="CPU cores for each worker (0: all); ignored on accelerators")
_ARGS.add_argument("--batch", type=int, default=0, help="override the config's batch size")
_ARGS.add_argument("--dtype", default="", help="override the config's compute dtype")
_ARGS.add_argument("--attention-impl", default="auto", choices=("auto", "xla", "cudnn"),
                   help="our model's attention: auto (cuDNN on GPU in bf16/fp16), xla, cudnn")
_ARGS.add_argument("--no-image-step", action="store_true",
                   help="skip the T=1 (image) step of our model")
_ARGS.add_argument("--json", default="", help="also write all results to this file")


class Worker:
  """A benchmark worker process and its end of the JSON-lines protocol."""

  def __init__(self, name: str, argv: list[str], affinity):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    self.name = name
    self.proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None)
    self.ready = self._read()

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"{self.name} worker exited with status {self.proc.wait()} "
                       "(its error is above)")
    return json.loads(line)

  def time(self, kind: str, steps: int) -> dict:
    """{"times": wall seconds, "cpu_times": CPU seconds} of `steps` steps."""
    self.proc.stdin.write(json.dumps({"cmd": "time", "kind": kind, "steps": steps}) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
      except (BrokenPipeError, subprocess.TimeoutExpired):
        self.proc.kill()
        self.proc.wait()


def detect_backend() -> str:
  return subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                        check=True, capture_output=True, text=True).stdout.split()[-1]


def config_names(arg: str, backend: str) -> list[str]:
  if arg == "auto":
    return ["bench", "small"] if backend == "cpu" else ["B/16"]
  names = [n for n in arg.split(",") if n]
  for name in names:
    bench_common.resolve_config(name)  # exits with the list of names if unknown
    if backend == "cpu" and bench_common.CONFIGS[name].accelerator_only:
      raise SystemExit(f"config {name!r} is for accelerators only (the JAX backend is cpu)")
  return names


def benchmark_config(name: str, args, backend: str) -> dict:
  """Starts the workers for one config, alternates them, returns all measurements."""
  affinity = bench_common.cpu_affinity(args.threads) if backend == "cpu" else None
  common = ["--config", name, "--batch", str(args.batch), "--dtype", args.dtype]
  workers = {"cover_jax": Worker(
      "cover_jax", [sys.executable, "benchmarks/jax_worker.py", *common,
                    "--attention-impl", args.attention_impl]
      + ([] if args.no_image_step else ["--image-step"]), affinity)}
  try:
    if args.compare_torch:
      workers["pytorch"] = Worker(
          "pytorch", [args.torch_python, "benchmarks/torch_worker.py", *common,
                      "--threads", str(len(affinity) if affinity else 0)], affinity)
    times = {key: {"times": [], "cpu_times": []} for key in _timed_kinds(workers)}
    for round_index in range(args.rounds):
      kinds = _timed_kinds(workers)
      if round_index % 2:  # alternate who goes first
        kinds = kinds[::-1]
      for worker_name, kind in kinds:
        for key, values in workers[worker_name].time(kind, args.steps).items():
          times[(worker_name, kind)][key].extend(values)
    return {"config": name, "ready": {k: w.ready for k, w in workers.items()},
            "times": {f"{w}/{k}": t for (w, k), t in times.items()}}
  finally:
    for worker in workers.values():
      worker.close()


def _timed_kinds(workers) -> list[tuple[str, str]]:
  kinds = [("cover_jax", "video")]
  if "image" in workers["cover_jax"].ready:
    kinds.append(("cover_jax", "image"))
  if "pytorch" in workers:
    kinds.append(("pytorch", "video"))
  return kinds


def step_stats(times: list[float], cpu_times: list[float]) -> dict:
  deciles = (statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1
             else times * 9)
  return {"median_s": statistics.median(times), "p10_s": deciles[0], "p90_s": deciles[-1],
          "min_s": min(times), "cpu_median_s": statistics.median(cpu_times),
          "steps": len(times)}


def summarise(result: dict, args) -> dict:
  """Adds FLOPs, clips/s, FLOP/s and MFU to one config's raw measurements."""
  config = bench_common.resolve_config(result["config"], args.batch, args.dtype)
  ours = result["ready"]["cover_jax"]
  peaks = {k: v for ready in result["ready"].values() for k, v in ready["peaks"].items()}
  peak_name = max(peaks, key=peaks.get)
  rows = []
  for key, times in result["times"].items():
    worker_name, kind = key.split("/")
    setup = ours["image"] if kind == "image" else ours
    stats = step_stats(times["times"], times["cpu_times"])
    step_flops = setup["analytic_flops"]
    rows.append({
        "impl": worker_name, "kind": kind, "frames": setup["frames"],
        "compile_s": result["ready"][worker_name]["compile_s"] if kind == "video"
                     else setup["compile_s"],
        **stats, "clips_per_s": config.batch / stats["median_s"], "flops": step_flops,
        "flops_per_s": step_flops / stats["median_s"],
        "mfu": step_flops / stats["median_s"] / peaks[peak_name]})
  return {"config": result["config"], "settings": config.__dict__, "rows": rows,
          "peaks": peaks, "peak": peak_name, "ready": result["ready"]}


def print_summary(summary: dict) -> None:
  c = summary["settings"]
  print(f"\n== {summary['config']}: {c['image_size']}^2 x {c['frames']} frames, patch "
        f"{c['patch_size']}, width {c['width']}, {c['depth']} layers, {c['num_heads']} heads, "
        f"MLP {c['mlp_dim']}, batch {c['batch']}, {c['dtype']}")
  print(f"{'impl':<10} {'T':>2} {'compile s':>9} {'step ms':>8} {'(p10-p90)':>15} "
        f"{'clips/s':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} {'MFU':>6} {'CPU ms':>8}")
  for row in summary["rows"]:
    spread = f"({1e3 * row['p10_s']:.1f}-{1e3 * row['p90_s']:.1f})"
    compile_s = f"{row['compile_s']:.1f}" if row["impl"] == "cover_jax" else "-"
    print(f"{row['impl']:<10} {row['frames']:>2} {compile_s:>9} {1e3 * row['median_s']:>8.1f} "
          f"{spread:>15} {row['clips_per_s']:>8.2f} {row['flops'] / 1e9:>10.2f} "
          f"{row['flops_per_s'] / 1e9:>8.1f} {100 * row['mfu']:>5.1f}% "
          f"{1e3 * row['cpu_median_s']:>8.1f}")
  print(f"peak: {summary['peaks'][summary['peak']] / 1e9:.1f} GFLOP/s ({summary['peak']}); "
        "all measured: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in summary["peaks"].items()))
  for line in comparison_lines(summary):
    print(line)


def comparison_lines(summary: dict) -> list[str]:
  rows = {(r["impl"], r["kind"]): r for r in summary["rows"]}
  ours, lines = rows[("cover_jax", "video")], []
  if ("pytorch", "video") in rows:
    torch_row = rows[("pytorch", "video")]
    lines.append(f"cover_jax / pytorch: {ours['clips_per_s'] / torch_row['clips_per_s']:.2f}x "
                 f"clips/s (median step times); {torch_row['p10_s'] / ours['p10_s']:.2f}x at the "
                 "10th percentiles (the least disturbed steps on a shared machine)")
  if ("cover_jax", "image") in rows:
    image = rows[("cover_jax", "image")]
    per_frame = ours["median_s"] / ours["frames"]
    lines.append(f"image step (T=1): {1e3 * image['median_s']:.1f} ms = "
                 f"{image['median_s'] / per_frame:.2f} x (video step / T)")
  ready = summary["ready"]["cover_jax"]
  dots, cost = ready["xla_dot_flops"], ready["xla_cost_flops"]
  check = [f"XLA dots {dots / 1e9:.3f} ({dots / ready['analytic_flops']:.3f}x)"] if dots else []
  check += [f"XLA cost analysis {cost / 1e9:.3f} ({cost / ready['analytic_flops']:.3f}x, "
            "elementwise ops included)"] if cost else []
  lines.append(f"FLOPs/step: analytic {ready['analytic_flops'] / 1e9:.3f} G; " + "; ".join(check))
  return lines


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_line(backend: str, ready: dict) -> str:
  if backend == "cpu":
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"machine: {cpu_name()}, {cores} cores available, "
            f"JAX {ready['jax']}, XLA_FLAGS={ready['xla_flags']!r}")
  return (f"machine: {ready['num_devices']} x {ready['device']} ({backend}), JAX {ready['jax']}, "
          f"XLA_FLAGS={ready['xla_flags']!r}")


def main() -> None:
  args = _ARGS.parse_args()
  backend = detect_backend()
  summaries = []
  for name in config_names(args.configs, backend):
    summary = summarise(benchmark_config(name, args, backend), args)
    if not summaries:
      print(machine_line(backend, summary["ready"]["cover_jax"]))
      if backend == "cpu":
        print(f"each worker pinned to {args.threads or 'all'} core(s)")
    print_summary(summary)
    summaries.append(summary)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(summaries, indent=1))


if __name__ == "__main__":
  main()
