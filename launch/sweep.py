r"""Expand a config's sweep function into runs, each with its own workdir, and launch them.

A config file may define sweeps next to `get_config` (as big_vision does):

  def sweep_learning_rate():
    return [{"optimizer.learning_rate": lr} for lr in (3e-4, 1e-3, 3e-3)]

Each entry is one run: its `--config.<field>=<value>` overrides, and a workdir
`<workdir>/<sweep>/<NN>_<field=value,...>`. Runs go one after the other on
this machine (`--launcher=local`) or as one SLURM job each
(`--launcher=slurm`, with launch/slurm.py's options after the sweep's own).
`--dry-run` prints every command.

  python launch/sweep.py --config=configs/demo.py --sweep=learning_rate \
      --workdir=/tmp/sweeps --dry-run
  python launch/sweep.py --config=configs/demo.py:steps=2000 --sweep=learning_rate \
      --workdir=/shared/sweeps --launcher=slurm --nodes=1 --gpus_per_node=8 \
      -- --config.log_every=50
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys

_LAUNCH = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_LAUNCH, os.path.dirname(_LAUNCH)]  # launch/, and the repository (config imports)
import commands  # noqa: E402  (launch/commands.py, next to this script)
import slurm  # noqa: E402


def load_sweep(config: str, sweep: str) -> list[dict]:
  """The entries of `sweep_<sweep>()` in the config file (`path[:arg]`)."""
  path = config.split(":", 1)[0]
  spec = importlib.util.spec_from_file_location("config_with_sweeps", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  names = sorted(n[len("sweep_"):] for n in dir(module) if n.startswith("sweep_"))
  if not hasattr(module, f"sweep_{sweep}"):
    raise SystemExit(f"{path} has no sweep_{sweep}(); its sweeps: {', '.join(names) or 'none'}")
  entries = list(getattr(module, f"sweep_{sweep}")())
  if not entries or not all(isinstance(e, dict) for e in entries):
    raise SystemExit(f"sweep_{sweep}() in {path} must return a non-empty list of dicts "
                     "{config field: value}")
  return entries


def flag_value(value) -> str:
  """How ml_collections' --config.x=... flags take a value."""
  return repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)


def run_name(index: int, entry: dict) -> str:
  parts = ",".join(f"{k.split('.')[-1]}={flag_value(v)}" for k, v in entry.items())
  return f"{index:02d}_" + re.sub(r"[^A-Za-z0-9_.,=+-]", "", parts)


def runs(args, entries) -> list[tuple[str, list[str]]]:
  """(workdir, cover_jax.main overrides) of every run."""
  out = []
  for i, entry in enumerate(entries):
    workdir = os.path.join(args.workdir, args.sweep, run_name(i, entry))
    overrides = [f"--config.{k}={flag_value(v)}" for k, v in entry.items()] + args.overrides
    out.append((workdir, overrides))
  return out


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="config file[:arg], as for cover_jax.main")
  parser.add_argument("--sweep", required=True, help="NAME of the config's sweep_NAME()")
  parser.add_argument("--workdir", required=True, help="root: each run gets a directory under it")
  parser.add_argument("--launcher", choices=["local", "slurm"], default="local")
  parser.add_argument("--python", default=sys.executable, help="(local) Python to run with")
  commands.add_dry_run(parser)
  argv, overrides = commands.split_overrides(argv)
  args, launcher_argv = parser.parse_known_args(argv)
  args.overrides, args.launcher_argv = overrides, launcher_argv
  if args.launcher == "local" and launcher_argv:
    parser.error(f"unrecognized arguments: {' '.join(launcher_argv)}")
  return args


def main(argv=None):
  args = parse(sys.argv[1:] if argv is None else argv)
  cmds, stdin = [], []
  for workdir, overrides in runs(args, load_sweep(args.config, args.sweep)):
    if args.launcher == "local":
      cmds.append(commands.main_command(args.config, workdir, overrides, python=args.python))
      stdin.append(None)
    else:
      name = [] if any(a.startswith("--job_name") for a in args.launcher_argv) else [
          f"--job_name={args.sweep}-{os.path.basename(workdir)[:2]}"]
      job = slurm.parse([*name, *args.launcher_argv, f"--config={args.config}",
                         f"--workdir={workdir}", "--", *overrides])
      job_cmds, job_stdin = slurm.submit_commands(job)
      cmds += job_cmds
      stdin += job_stdin
  commands.execute(cmds, args.dry_run, stdin_texts=stdin)


if __name__ == "__main__":
  main()
