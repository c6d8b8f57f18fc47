r"""The co-training study: which combination of datasets helps, with seeds, from one command.

  python -m cover_jax.study --config=configs/study.py --workdir=/tmp/cover_study
  python -m cover_jax.study --config=configs/study.py:quick=true --workdir=/tmp/cover_study_quick
  python -m cover_jax.study --config=configs/study.py --workdir=/tmp/cover_study --mode=report

Stage 0 pretrains the backbone; then every arm (cover_jax/config/study_arms.py)
trains for every seed as an ordinary run of the trainer (what
`python -m cover_jax.main` runs), each in its own workdir under --workdir:

  <workdir>/pretrain/                 stage 0
  <workdir>/<arm>/seed<s>/            one run (config.json, checkpoints/, results.json, ...)
  <workdir>/study.md, study.json, study.png   the report (cover_jax/evaluation/study_report.py)
  <workdir>/log.txt                   every log line of the study

Running the same command again continues a killed study: a finished run is
not trained again (its saved results are read), a half-trained one resumes
from its checkpoint. --mode=report writes the report from the runs finished so
far, training nothing.

Exit status: as `python -m cover_jax.main` (2 invalid config or flags, 3 a
non-finite loss, 4 preempted: run the same command again, 5 an unusable
workdir, 6 an unreadable dataset); 0 when the report is written.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

from cover_jax.config import command_line

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags (defined only when it runs, so the module imports anywhere)."""
  config_flags.DEFINE_config_file("config", None, "Study config file (configs/study.py).",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "The study's directory: a workdir per run, the report.")
  flags.DEFINE_enum("mode", "run", ["run", "report"],
                    "run: train what is not finished, then write the report; report: write "
                    "the report from the finished runs only.")
  flags.mark_flags_as_required(["config", "workdir"])


def run_study(study, workdir: str, *, train: bool = True) -> dict:
  """Trains every run of the study not yet finished (in order), then writes the report.

  The command's entry point after its flags: `study` is a locked study config
  (configs/study.py), already checked (`study_arms.check`).

  Returns:
    The report (study_report.build), also written to study.json / .md / .png.
  """
  import jax  # pylint: disable=import-outside-toplevel

  from cover_jax.checkpoint import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  from cover_jax.config import study_arms  # pylint: disable=import-outside-toplevel
  from cover_jax.evaluation import study_report  # pylint: disable=import-outside-toplevel
  from cover_jax.train import loop  # pylint: disable=import-outside-toplevel

  start, load = time.time(), _load()
  runs, done = study_arms.plan(study, workdir), []
  for i, run in enumerate(runs):
    results = workdir_lib.finished_results(run.workdir, run.config.total_steps)
    if results is None and train:
      print(f"\n=== study run {i + 1}/{len(runs)}: {run.arm.name}, seed {run.seed} "
            f"({run.arm.steps} steps) in {run.workdir}", flush=True)
      outcome = loop.train_and_evaluate(run.config, run.workdir)
      results = {"results": outcome.results, "train_top1": outcome.train_top1}
    if results is not None:
      done.append({"arm": run.arm.name, "seed": run.seed,
                   "workdir": os.path.relpath(run.workdir, workdir) if "://" not in workdir
                   else run.workdir, "seconds": _seconds(run.workdir),
                   "results": results["results"], "train_top1": results.get("train_top1")})
  stage0 = study_arms.pretrain_arm(study)
  report = study_report.build(([stage0] if stage0 else []) + study_arms.arms(study), done,
                              study_arms.names(study.videos),
                              _info(study, runs, done, time.time() - start, load, train))
  if jax.process_index() == 0:
    study_report.write(workdir, report)
  print(f"\n{study_report.markdown(report)}\nreport: {workdir}/study.md, study.json, study.png "
        f"({len(done)} of {len(runs)} runs finished)", flush=True)
  return report


def _info(study, runs, done, seconds: float, load: tuple, trained: bool) -> dict:
  """What the report says about the study besides its numbers."""
  total = sum(r["seconds"] or 0.0 for r in done)
  timing = (f"The {len(done)} runs took {total / 60:.1f} min (the sum of their own timings) "
            f"on {os.cpu_count()} CPU core(s)")
  timing += (f"; this command ran {seconds / 60:.1f} min, load average {load[0]:.1f} at its "
             f"start and {_load()[0]:.1f} at its end." if trained else
             "; this report was written from them without training (--mode=report).")
  return {"seeds": list(range(study.seeds)), "regime": study.regime, "steps": study.steps,
          "runs_planned": len(runs), "timing": timing,
          "datasets": {name: _dataset_info(ds) for name, ds in study.datasets.items()}}


def _dataset_info(ds) -> dict:
  syn = ds.get("synthetic")
  return {"classes": ds.num_classes, "source": ds.source,
          **({"train": syn.num_train, "test": syn.num_test, "noise": syn.get("noise")}
             if syn else {})}


def _seconds(workdir: str) -> float | None:
  """How long a run's last process took, from its timing.json (None if it has none)."""
  from cover_jax.checkpoint import workdir as workdir_lib  # pylint: disable=import-outside-toplevel

  try:
    marks = json.loads(workdir_lib.path(workdir, workdir_lib.TIMING).read_text())["marks"]
  except (OSError, ValueError, KeyError):
    return None
  return max(marks.values()) - marks["start"]


def _load() -> tuple[float, float, float]:
  try:
    return os.getloadavg()
  except OSError:
    return (float("nan"),) * 3


def main(argv):
  del argv
  study, workdir = FLAGS.config, FLAGS.workdir
  from cover_jax.train import exits  # pylint: disable=import-outside-toplevel
  jax = exits.start(f"cover_jax study: {FLAGS.mode} in {workdir}")

  from cover_jax.config import study_arms  # pylint: disable=import-outside-toplevel
  from cover_jax.metrics import run_log  # pylint: disable=import-outside-toplevel

  failures = exits.failures()
  exits.imports_done()
  try:
    study_arms.check(study, num_devices=jax.device_count(), process_count=jax.process_count())
    if FLAGS.mode == "run":
      print(f"log: {run_log.to_workdir(workdir)}", flush=True)
    run_study(study, workdir, train=FLAGS.mode == "run")
  except tuple(kind for kind, _, _ in failures) as e:
    status, message = exits.status_and_message(e, failures)
    print(message, file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
  from cover_jax.train import exits as _exits
  _exits.hold_garbage_collection()  # until main() has imported what it runs
  define_flags()
  app.run(main, flags_parser=lambda argv: command_line.parse_or_exit(argv, FLAGS["config"]))
