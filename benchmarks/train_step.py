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
  python benchmarks/train_step.py --configs=B/16 --batch=auto --attention-impl=cudnn,xla \
      --compare-torch --torch-attention=eager,sdpa        # GPU: what device_check.sh runs

Configs (`bench_common.CONFIGS`): bench (64^2, 8 frames, width 192, 4 layers,
batch 8), small (112^2, 8 frames, width 384, 6 layers, batch 4), B/16 (224^2,
8 frames, ViT-B, batch 32, bfloat16) and L/16 (ViT-L, batch 16, bfloat16), for
accelerators only; tiny.

Several implementations: `--attention-impl` and `--torch-attention` take
comma-separated lists, one worker each (named `cover_jax[cudnn]`,
`pytorch[sdpa]`, ...). On accelerators the workers run one after another
(`--sequential`): each needs the device's whole memory, and nothing else
runs there. `--batch=auto` sizes the batch from memory probes (`auto_batch`).
Each row's "peak MiB" is the device's peak after the warm-up steps (JAX:
`memory_stats`; torch: `max_memory_allocated`); "~" marks XLA's planned peak
where the device measures none (CPU). In a sequential run a worker that
fails (e.g. out of memory) is reported and the others still run; the exit
status is then 1.
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
_ARGS.add_argument("--torch-attention", default="eager",
                   help="comma-separated: eager (HF's own), sdpa (scaled_dot_product_attention)")
_ARGS.add_argument("--rounds", type=int, default=5, help="alternation rounds")
_ARGS.add_argument("--steps", type=int, default=10, help="timed steps per round and side")
_ARGS.add_argument("--threads", type=int, default=2,
                   help="CPU cores for each worker (0: all); ignored on accelerators")
_ARGS.add_argument("--batch", default="0",
                   help="override the config's batch size; auto: the largest multiple of 8 "
                        "that memory probes say fits (see auto_batch)")
_ARGS.add_argument("--memory-fraction", type=float, default=0.8,
                   help="--batch=auto: share of each device's memory a step may plan to use")
_ARGS.add_argument("--device-memory-gib", type=float, default=0.0,
                   help="--batch=auto: device memory where a probe reports none (CPU smoke runs)")
_ARGS.add_argument("--dtype", default="", help="override the config's compute dtype")
_ARGS.add_argument("--attention-impl", default="auto",
                   help="comma-separated, one worker each: auto (cuDNN on GPU in bf16/fp16), "
                        "xla, cudnn")
_ARGS.add_argument("--sequential", default="auto", choices=("auto", "yes", "no"),
                   help="one worker at a time (all its rounds, then the next) instead of taking "
                        "turns; auto: yes on accelerators, where each needs the whole memory")
_ARGS.add_argument("--no-image-step", action="store_true",
                   help="skip the T=1 (image) step of our model")
_ARGS.add_argument("--json", default="", help="also write all results to this file")


class WorkerFailed(RuntimeError):
  """A worker exited before answering (its error is on stderr above)."""


class Worker:
  """A benchmark worker process and its end of the JSON-lines protocol."""

  def __init__(self, name: str, argv: list[str], affinity):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    self.name = name
    self.proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
        preexec_fn=(lambda: os.sched_setaffinity(0, affinity)) if affinity else None)
    try:
      self.ready = self._read()
    except WorkerFailed:
      self.close()
      raise

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise WorkerFailed(f"{self.name} worker exited with status {self.proc.wait()} "
                         "(its error is above)")
    return json.loads(line)

  def time(self, kind: str, steps: int) -> dict:
    """{"times": wall seconds, "cpu_times": CPU seconds} of `steps` steps."""
    try:
      self.proc.stdin.write(json.dumps({"cmd": "time", "kind": kind, "steps": steps}) + "\n")
      self.proc.stdin.flush()
    except BrokenPipeError:
      pass  # it died: _read says so
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
    self.proc.stdout.close()


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


def worker_specs(name: str, args, batch: int, affinity) -> list[tuple[str, list[str]]]:
  """(worker name, argv) of every implementation to time: ours per attention, then PyTorch's."""
  common = ["--config", name, "--batch", str(batch), "--dtype", args.dtype]
  impls = args.attention_impl.split(",")
  specs = [("cover_jax" if len(impls) == 1 else f"cover_jax[{impl}]",
            [sys.executable, "benchmarks/jax_worker.py", *common, "--attention-impl", impl]
            + ([] if args.no_image_step else ["--image-step"])) for impl in impls]
  if args.compare_torch:
    attentions = args.torch_attention.split(",")
    specs += [("pytorch" if len(attentions) == 1 else f"pytorch[{attention}]",
               [args.torch_python, "benchmarks/torch_worker.py", *common, "--attention",
                attention, "--threads", str(len(affinity) if affinity else 0)])
              for attention in attentions]
  return specs


def auto_batch(name: str, args, backend: str, affinity) -> tuple[int, list[str]]:
  """The batch for `--batch=auto`, and how it was chosen (lines to print).

  Probes at batch 8: our step compiled with XLA attention (its (B, H, L, L)
  maps make it the larger of ours: cuDNN's flash attention keeps none), XLA's
  memory analysis split into a fixed part (state, outputs) and `temp` per
  clip; and, with --compare-torch, PyTorch's HF eager step run three times,
  its peak minus what stays (parameters, gradients, AdamW moments) per clip.
  Each gives the largest batch whose plan stays within --memory-fraction of
  its device's memory (JAX's allocator limit, torch's total); the smallest
  of them, rounded down to a multiple of 8, is used for every worker.
  """
  probe = 8
  common = ["--config", name, "--batch", str(probe), "--dtype", args.dtype]
  fallback = args.device_memory_gib * 2**30 or None
  lines, fits = [], []
  jax_probe = _probe(Worker("probe cover_jax[xla]", [
      sys.executable, "benchmarks/jax_worker.py", *common, "--attention-impl", "xla",
      "--probe-memory"], affinity))
  mem = jax_probe["xla_memory_mb"]
  fits.append(_fitting_batch("cover_jax[xla]", (mem["peak"] - mem["temp"]) * 2**20,
                             mem["temp"] * 2**20 / probe,
                             jax_probe["device_bytes"] or fallback, args, lines))
  if args.compare_torch and backend == "cpu":
    lines.append("pytorch[eager] probe: skipped on CPU (torch reports no host memory use)")
  elif args.compare_torch:
    torch_probe = _probe(Worker("probe pytorch[eager]", [
        args.torch_python, "benchmarks/torch_worker.py", *common, "--attention", "eager"],
        affinity))
    fits.append(_fitting_batch(
        "pytorch[eager]", torch_probe["state_bytes"],
        (torch_probe["peak_bytes"] - torch_probe["state_bytes"]) / probe,
        torch_probe["device_bytes"], args, lines))
  batch = max(8, min(fits) // 8 * 8)
  lines.append(f"batch: {batch} (the smallest of {fits}, down to a multiple of 8)")
  return batch, lines


def _probe(worker: Worker) -> dict:
  worker.close()
  return worker.ready


def _fitting_batch(name, fixed_bytes, per_clip_bytes, device_bytes, args, lines) -> int:
  if not device_bytes:
    raise SystemExit(f"--batch=auto: {name}'s device reports no memory size; give "
                     "--device-memory-gib")
  usable = args.memory_fraction * device_bytes
  batch = int((usable - fixed_bytes) // per_clip_bytes)
  lines.append(f"{name} probe at batch 8: fixed {fixed_bytes / 2**20:.4g} MiB + "
               f"{per_clip_bytes / 2**20:.4g} MiB per clip; {args.memory_fraction:.0%} of "
               f"{device_bytes / 2**20:.5g} MiB holds {batch} clips")
  return batch


def benchmark_config(name: str, args, backend: str) -> dict:
  """Times every worker of one config (in turns or one after another); all measurements."""
  affinity = bench_common.cpu_affinity(args.threads) if backend == "cpu" else None
  sizing = []
  batch = int(args.batch) if args.batch != "auto" else None
  if batch is None:
    try:
      batch, sizing = auto_batch(name, args, backend, affinity)
    except WorkerFailed as e:
      raise SystemExit(f"--batch=auto: a memory probe failed: {e}") from e
  specs = worker_specs(name, args, batch, affinity)
  sequential = args.sequential == "yes" or (args.sequential == "auto" and backend != "cpu")
  run = _run_sequential if sequential else _run_in_turns
  ready, times, failed = run(specs, args, affinity)
  return {"config": name, "batch": batch, "sizing": sizing, "ready": ready, "failed": failed,
          "times": {f"{w}/{k}": t for (w, k), t in times.items()}}


def _run_in_turns(specs, args, affinity):
  """All workers up at once; round after round each times a few steps while the others wait."""
  workers = {}
  try:
    for worker_name, argv in specs:
      workers[worker_name] = Worker(worker_name, argv, affinity)
    kinds = [k for w in workers.values() for k in _timed_kinds(w)]
    times = {key: {"times": [], "cpu_times": []} for key in kinds}
    for round_index in range(args.rounds):
      # Alternate who goes first.
      for worker_name, kind in (kinds[::-1] if round_index % 2 else kinds):
        for key, values in workers[worker_name].time(kind, args.steps).items():
          times[(worker_name, kind)][key].extend(values)
    return {k: w.ready for k, w in workers.items()}, times, {}
  except WorkerFailed as e:
    raise SystemExit(str(e)) from e
  finally:
    for worker in workers.values():
      worker.close()


def _run_sequential(specs, args, affinity):
  """One worker at a time, all its rounds, then the next; a failed worker is reported."""
  ready, times, failed = {}, {}, {}
  for worker_name, argv in specs:
    try:
      worker = Worker(worker_name, argv, affinity)
    except WorkerFailed as e:
      failed[worker_name] = str(e)
      continue
    try:
      for key in _timed_kinds(worker):
        times[key] = {"times": [], "cpu_times": []}
        for _ in range(args.rounds):
          for field, values in worker.time(key[1], args.steps).items():
            times[key][field].extend(values)
      ready[worker_name] = worker.ready
    except WorkerFailed as e:
      failed[worker_name] = str(e)
      times = {k: v for k, v in times.items() if k[0] != worker_name}
    finally:
      worker.close()
  return ready, times, failed


def _timed_kinds(worker: Worker) -> list[tuple[str, str]]:
  return [(worker.name, "video")] + ([(worker.name, "image")] if "image" in worker.ready else [])


def step_stats(times: list[float], cpu_times: list[float]) -> dict:
  deciles = (statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1
             else times * 9)
  return {"median_s": statistics.median(times), "p10_s": deciles[0], "p90_s": deciles[-1],
          "min_s": min(times), "cpu_median_s": statistics.median(cpu_times),
          "steps": len(times)}


def summarise(result: dict, args) -> dict:
  """Adds FLOPs, clips/s, FLOP/s, MFU and memory to one config's raw measurements."""
  config = bench_common.resolve_config(result["config"], result["batch"], args.dtype)
  peaks = {k: v for ready in result["ready"].values() for k, v in ready["peaks"].items()}
  peak_name = max(peaks, key=peaks.get) if peaks else None
  rows = []
  for key, times in result["times"].items():
    worker_name, kind = key.split("/")
    ready = result["ready"][worker_name]
    frames = 1 if kind == "image" else config.frames
    stats = step_stats(times["times"], times["cpu_times"])
    step_flops = bench_common.step_flops(config, frames)
    rows.append({
        "impl": worker_name, "kind": kind, "frames": frames,
        "compile_s": (ready["image"] if kind == "image" else ready)["compile_s"],
        **stats, "clips_per_s": config.batch / stats["median_s"], "flops": step_flops,
        "flops_per_s": step_flops / stats["median_s"],
        "mfu": step_flops / stats["median_s"] / peaks[peak_name],
        "peak_memory": memory_text(ready) if kind == "video" else "-"})
  return {"config": result["config"], "settings": config.__dict__, "rows": rows,
          "peaks": peaks, "peak": peak_name, "ready": result["ready"],
          "failed": result["failed"], "sizing": result["sizing"]}


def memory_text(ready: dict) -> str:
  """Peak device memory measured after the warm-up (MiB); '~' XLA's plan where none is measured."""
  if ready.get("peak_bytes"):
    return f"{ready['peak_bytes'] / 2**20:.0f}"
  if "xla_memory_mb" in ready:
    return f"~{ready['xla_memory_mb']['peak']:.0f}"
  return "-"


def print_summary(summary: dict) -> None:
  c = summary["settings"]
  print(f"\n== {summary['config']}: {c['image_size']}^2 x {c['frames']} frames, patch "
        f"{c['patch_size']}, width {c['width']}, {c['depth']} layers, {c['num_heads']} heads, "
        f"MLP {c['mlp_dim']}, batch {c['batch']}, {c['dtype']}")
  for line in summary["sizing"]:
    print("  sizing: " + line)
  print(f"{'impl':<18} {'T':>2} {'compile s':>9} {'step ms':>8} {'(p10-p90)':>15} "
        f"{'clips/s':>8} {'GFLOP/step':>10} {'GFLOP/s':>8} {'MFU':>6} {'CPU ms':>8} "
        f"{'peak MiB':>8}")
  for row in summary["rows"]:
    spread = f"({1e3 * row['p10_s']:.1f}-{1e3 * row['p90_s']:.1f})"
    compile_s = f"{row['compile_s']:.1f}" if row["impl"].startswith("cover_jax") else "-"
    print(f"{row['impl']:<18} {row['frames']:>2} {compile_s:>9} {1e3 * row['median_s']:>8.1f} "
          f"{spread:>15} {row['clips_per_s']:>8.2f} {row['flops'] / 1e9:>10.2f} "
          f"{row['flops_per_s'] / 1e9:>8.1f} {100 * row['mfu']:>5.1f}% "
          f"{1e3 * row['cpu_median_s']:>8.1f} {row['peak_memory']:>8}")
  for name, error in summary["failed"].items():
    print(f"{name:<18} FAILED: {error}")
  if summary["peak"]:
    print(f"peak: {summary['peaks'][summary['peak']] / 1e9:.1f} GFLOP/s ({summary['peak']}); "
          "all measured: "
          + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in summary["peaks"].items()))
  for name, ready in summary["ready"].items():
    if "attention" in ready:
      print(f"{name} attention: {ready['attention']}")
  for line in comparison_lines(summary):
    print(line)


def comparison_lines(summary: dict) -> list[str]:
  video = {r["impl"]: r for r in summary["rows"] if r["kind"] == "video"}
  images = {r["impl"]: r for r in summary["rows"] if r["kind"] == "image"}
  ours = {n: r for n, r in video.items() if n.startswith("cover_jax")}
  lines = []
  for name, row in ours.items():
    for torch_name, torch_row in video.items():
      if torch_name.startswith("pytorch"):
        lines.append(f"{name} / {torch_name}: "
                     f"{row['clips_per_s'] / torch_row['clips_per_s']:.2f}x clips/s (median step "
                     f"times); {torch_row['p10_s'] / row['p10_s']:.2f}x at the 10th percentiles "
                     "(the least disturbed steps on a shared machine)")
    if name in images:
      per_frame = row["median_s"] / row["frames"]
      lines.append(f"{name} image step (T=1): {1e3 * images[name]['median_s']:.1f} ms = "
                   f"{images[name]['median_s'] / per_frame:.2f} x (video step / T)")
  ready = next((summary["ready"][n] for n in ours), None)
  if ready:
    dots, cost = ready["xla_dot_flops"], ready["xla_cost_flops"]
    check = [f"XLA dots {dots / 1e9:.3f} ({dots / ready['analytic_flops']:.3f}x)"] if dots else []
    check += [f"XLA cost analysis {cost / 1e9:.3f} ({cost / ready['analytic_flops']:.3f}x, "
              "elementwise ops included)"] if cost else []
    lines.append(f"FLOPs/step: analytic {ready['analytic_flops'] / 1e9:.3f} G; "
                 + "; ".join(check))
  return lines


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_line(backend: str, summary: dict) -> str:
  ready = next((r for r in summary["ready"].values() if "jax" in r), None)
  if ready is None:
    return "machine: (no JAX worker answered)"
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
      print(machine_line(backend, summary))
      if backend == "cpu":
        print(f"each worker pinned to {args.threads or 'all'} core(s)")
    print_summary(summary)
    summaries.append(summary)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(summaries, indent=1))
  if any(s["failed"] for s in summaries):
    sys.exit(1)


if __name__ == "__main__":
  main()
