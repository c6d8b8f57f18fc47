r"""Where a run's wall time goes, phase by phase: start-up, training, evaluation, exit.

Runs the main command (`python -m cover_jax.main`) as a user would, cold (a
new data_dir and an empty compilation cache: the embedded datasets are built
and every step compiled) and then warm (the same data_dir and cache, a new
workdir), for each config, and prints one table: the time each stdout line of
the run arrived (the run's own story), the marks it writes to
`<workdir>/timing.json` (metrics/timing.py), and when the process exited.

  python benchmarks/startup.py                                  # demo (200 steps) and tiny
  python benchmarks/startup.py --configs=tiny --repeats=2
  python benchmarks/startup.py --configs=demo --steps=4000      # the whole main job

Phases (seconds; "cumulative" is since the command started):
  imports + config     Python start, absl, ml_collections, the config file
  jax/tf + validation  JAX and TensorFlow imported, the config checked
  set-up to datasets   mesh, model shapes, train-step compiles started
  datasets             the embedded datasets built (cold) or opened
  state                fresh (initialised) or restored
  first batch          the input pipelines built and the first batch ready
  first step           the first step done (waits for its compile)
  compile per shape    each input shape's compile (in the background, overlapping the above)
  training             the remaining steps (steady steps/s of the last window)
  evaluation           the final evaluation
  checkpoint close     waiting for the last checkpoint's write
  table -> exit        from the final table to the process's exit
Machines of the same kind differ 1.3-2x: compare rows measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = {"demo": "configs/demo.py", "tiny": "configs/demo.py:tiny=true"}


def run_once(config: str, workdir: pathlib.Path, data_dir: str, cache_dir: str,
             steps: int | None, repo: pathlib.Path = REPO, extra=()) -> dict:
  """Runs the main command; returns when each story line arrived, the timing marks, exit."""
  cmd = [sys.executable, "-u", "-m", "cover_jax.main", f"--config={config}",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}"]
  if steps:
    cmd.append(f"--config.total_steps={steps}")
  cmd += list(extra)
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache_dir, "PYTHONPATH": str(repo)}
  start = time.time()
  proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.DEVNULL)
  lines = []
  for line in proc.stdout:
    lines.append((time.time(), line.rstrip("\n")))
  status = proc.wait()
  end = time.time()
  if status:
    raise SystemExit(f"{' '.join(cmd)} exited with status {status}")
  path = workdir / "timing.json"  # code before timing.json existed: the story lines only
  timing = json.loads(path.read_text()) if path.exists() else {"marks": {}, "compile_s": {}}
  return {"start": start, "end": end, "lines": lines, **timing}


def _first(run: dict, prefix: str) -> float | None:
  return next((t for t, line in run["lines"] if line.startswith(prefix)), None)


def phases(run: dict) -> list[tuple[str, float | None]]:
  """(phase, seconds) in the order of the module docstring."""
  m, t0 = run["marks"], run["start"]
  points = [("imports + config", _first(run, "cover_jax:")),
            ("jax/tf + validation", _first(run, "config:")),
            ("set-up to datasets", _first(run, "datasets:")),
            ("datasets", m.get("datasets")), ("state", m.get("state")),
            ("first batch", m.get("first_batch")), ("first step", m.get("first_step"))]
  out, previous = [], t0
  for name, at in points:
    out.append((name, None if at is None else at - previous))
    previous = at or previous
  for shapes, seconds in run["compile_s"].items():
    out.append((f"  compile: {shapes}", seconds))
  table_at = _first(run, "Final accuracy") or _first(run, "dataset ")
  out += [("training", m.get("trained", 0) - m.get("first_step", 0)),
          ("evaluation", m.get("eval_end", 0) - m.get("eval_start", 0)),
          ("checkpoint close", m.get("checkpoints_closed", 0) - m.get("eval_end", 0)),
          ("table -> exit", run["end"] - table_at if table_at else None)]
  first_step = m.get("first_step") or _first(run, "step ")  # else: the first logged step
  out.append(("command -> first step", first_step - t0 if first_step else None))
  out.append(("total", run["end"] - t0))
  return out


def _steady(run: dict) -> str:
  rates = run.get("steps_per_sec") or []
  return f"{rates[-1]:.2f}" if rates else "-"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="demo,tiny", help=f"comma-separated: {list(CONFIGS)}")
  parser.add_argument("--steps", type=int, default=200,
                      help="training steps of the demo (0: the config's own); tiny keeps 6")
  parser.add_argument("--repeats", type=int, default=1, help="warm runs after the cold one")
  parser.add_argument("--first_step_line", action="store_true",
                      help="log every step (--config.log_every=1), so that the first step's "
                           "line times it also for code without timing.json")
  parser.add_argument("--repo", default=str(REPO),
                      help="the checkout whose code runs (e.g. an older one, side by side)")
  args = parser.parse_args(argv)
  columns, results = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    for name in args.configs.split(","):
      data_dir, cache_dir = str(root / f"{name}-data"), str(root / f"{name}-xla")
      steps = args.steps if name == "demo" else None
      for i in range(1 + args.repeats):
        label = f"{name} {'cold' if i == 0 else 'warm'}" + (f" {i}" if args.repeats > 1 and i else "")
        print(f"running {label} ...", file=sys.stderr, flush=True)
        run = run_once(CONFIGS[name], root / f"{name}-run{i}", data_dir, cache_dir, steps,
                       pathlib.Path(args.repo),
                       ["--config.log_every=1"] if args.first_step_line else [])
        columns.append(label)
        results[label] = (phases(run), _steady(run))
  _print_table(columns, results)


def _print_table(columns, results) -> None:
  names = [n for n, _ in results[columns[0]][0]]
  for label in columns[1:]:  # compile rows can differ between runs
    names += [n for n, _ in results[label][0] if n not in names]
  width = max(len(n) for n in names) + 2
  print(f"{'phase (s)':<{width}}" + "".join(f"{c:>12}" for c in columns))
  print("-" * (width + 12 * len(columns)))
  for name in names:
    row = []
    for label in columns:
      value = dict(results[label][0]).get(name)
      row.append("-" if value is None else f"{value:.1f}")
    print(f"{name:<{width}}" + "".join(f"{v:>12}" for v in row))
  print(f"{'steady steps/s':<{width}}" + "".join(f"{results[c][1]:>12}" for c in columns))


if __name__ == "__main__":
  main()
