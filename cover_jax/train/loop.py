"""The host loop: mixture of datasets -> jitted train step -> metrics, evals, checkpoints.

The story of a run (`train_and_evaluate`), in order:
  1. a finished run (results of `total_steps` beside a checkpoint of that
     step) prints its saved table and stops: a rerun evaluates nothing twice;
  2. set-up (`_setup`): the workdir, the mesh, the datasets, the state (see
     the resume order below), the compiled train and eval steps;
  3. training (`_train_loop`): each step's dataset(s) from the mixture, the
     step, the metrics of the step before (fetched while this one runs),
     logs, checkpoints, periodic evaluations; SIGTERM saves and stops;
  4. the final evaluation, the results table (results.txt, results.json);
  5. closing (`_close`): the input pipelines, then the checkpoints (waiting
     for the last save), then the metric writers.

Resume order (the one place it is decided): the newest checkpoint in
`workdir/checkpoints` that restores and fits the config (resume_checks.py: a
config that does not fit stops the run; a damaged checkpoint is set aside and
the previous one tried), else `config.init_from` (pretrained weights loaded
into the fresh, sharded state; cover_jax/pretrained/), else a fresh
initialisation from `config.seed`.

What a resumed run takes from where (so that it is bit-identical, on CPU, to
a run that was never interrupted):
- params, optimizer state, step: the checkpoint's `state`;
- RNG: derived from (seed, step) inside the step, nothing to save;
- which dataset(s) each step trains on: derived from (seed, step) (mixture.py);
- each dataset's input position: the checkpoint meta's `stream_positions` and
  `input_position` (streams.py);
- the non-finite skip counters: the meta's `nonfinite` (nonfinite.py);
- the train top-1 of the last logging window: the meta's `train_top1`.

Metrics of step s are fetched to the host after step s+1 has been dispatched,
so the device never waits for the host; every fetched loss is checked, and all
pending ones are checked before a checkpoint is written, so a checkpoint never
holds a state reached through a non-finite loss.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
import time

import jax
from clu import metric_writers, periodic_actions

from cover_jax.checkpoint import manager, resume_checks, workdir as workdir_lib
from cover_jax.evaluation import dataset as eval_data, step as eval_step, table, views
from cover_jax.input import device, pipeline
from cover_jax.metrics import timing as timing_lib, writers
from cover_jax.parallel import sharding
from cover_jax.pretrained import loader as pretrained_loader
from cover_jax.train import build, mixture, nonfinite, preemption
from cover_jax.train import state as train_state, step as train_step
from cover_jax.train import streams as streams_lib, train_metrics

NonFiniteLossError = nonfinite.NonFiniteLossError
NoCheckpointError = manager.NoCheckpointError


@dataclasses.dataclass
class _Run:
  """Everything the loop needs, built once by `_setup`."""
  config: object
  workdir: str
  mesh: object
  specs: dict
  names: tuple[str, ...]  # the datasets, sorted: the heads' order
  mixture: mixture.DatasetMixture
  state: object
  start_step: int
  step_fn: train_step.TrainStep
  eval_fn: object
  ckpt: manager.Checkpointer
  writer: object
  timing: timing_lib.Timing
  read_only: bool = False  # --mode=eval: nothing is written to the workdir
  eval_datasets: dict = dataclasses.field(default_factory=dict)  # built on first use
  streams: streams_lib.TrainStreams | None = None
  resumed_meta: dict | None = None  # meta of the checkpoint resumed from
  rng: object = None  # the run's RNG; each step folds its step number in
  rules: tuple = sharding.LOGICAL_AXIS_RULES  # logical axis -> mesh axes (config.axis_rules)


@dataclasses.dataclass
class Outcome:
  """What a training run ends with."""
  results: dict[str, dict[str, float]]  # dataset -> eval_step.evaluate_dataset's dict
  train_top1: dict[str, float]          # dataset -> train top-1 of the last logging window
  train_step_compilations: int          # one per distinct input shape (0: nothing was run)


def train_and_evaluate(config, workdir: str) -> Outcome:
  """Trains per `config`, evaluates every dataset, returns the final results."""
  timing = timing_lib.Timing()
  timing.mark("start")
  finished = workdir_lib.finished_results(workdir, config.total_steps)
  if finished is not None:
    _say(f"{workdir} has finished all {config.total_steps} steps; its results "
         f"({workdir_lib.RESULTS_TXT}):\n{finished['table']}\n(raise --config.total_steps to "
         "train further; --mode=eval evaluates the checkpoint again)")
    return Outcome(finished["results"], finished["train_top1"], 0)
  run = _setup(config, workdir, timing)
  try:
    train_top1 = _train_loop(run)
    compilations = run.step_fn.compilations()  # one per distinct input shape
    logging.info("train step compiled %d time(s)", compilations)
    results = _evaluate_all(run, run.state, step=config.total_steps)
    _write_results(run, results, train_top1)
    return Outcome(results, train_top1, compilations)
  finally:
    _close(run)


def evaluate_checkpoint(config, workdir: str) -> dict[str, dict[str, float]]:
  """Evaluates the latest checkpoint in `workdir` on every dataset's test split.

  Read-only: prints the table and writes nothing (the run's own results and
  metrics stay as training left them).
  """
  run = _setup(config, workdir, timing_lib.Timing(), read_only=True)
  try:
    results = _evaluate_all(run, run.state, step=run.start_step)
    _say(f"\nAccuracy of the checkpoint of step {run.start_step}:\n"
         + _table(run, results, (run.resumed_meta or {}).get("train_top1") or {}))
    return results
  finally:
    _close(run)


def _say(text: str) -> None:
  """A line for the user (process 0 tells the story); one write, so threads' lines stay whole."""
  if jax.process_index() == 0:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _table(run: _Run, results, train_top1) -> str:
  views_of = {n: f"{views.num_views(s.config) // s.config.eval_crops}x{s.config.eval_crops}"
              for n, s in run.specs.items()}
  return table.format_table(results, {n: s.config.num_classes for n, s in run.specs.items()},
                            train_top1, views_of)


def _write_results(run: _Run, results, train_top1) -> None:
  text = _table(run, results, train_top1)
  _say(f"\nFinal accuracy after {run.config.total_steps} steps:\n{text}")
  run.ckpt.wait()  # results.json claims the run finished: its last checkpoint first
  if jax.process_index() == 0:
    workdir_lib.write_results(run.workdir, run.config.total_steps, results, train_top1, text)


def _setup(config, workdir: str, timing: timing_lib.Timing | None = None,
           read_only: bool = False) -> _Run:
  """The run's pieces, in the order they are needed (see the module docstring).

  The train step is built from the config alone and starts compiling (in the
  background, once per input shape) before the datasets are opened and the
  state is restored, so those overlap the compiles.
  """
  timing = timing or timing_lib.Timing()
  if not read_only:
    workdir_lib.ensure_writable(workdir)
    if jax.process_index() == 0:
      workdir_lib.write_config(workdir, config)
  mesh = sharding.make_mesh(config.mesh_shape)
  rules = sharding.rules_from_config(config.axis_rules)
  _say(f"process {jax.process_index()} of {jax.process_count()}, {jax.device_count()} "
       f"device(s), mesh {dict(mesh.shape)}")
  built = build.build_step(config, mesh, rules)  # what benchmarks/aot_compile.py compiles
  names, graphdef, abstract = built.names, built.graphdef, built.abstract
  step_fn, rng = built.step, jax.random.key(config.seed + 1)
  if not read_only:
    inputs = [build.step_batches(config, datasets, mesh, rules)
              for datasets in build.distinct_steps(config, built)]
    step_fn.precompile(jax.tree.leaves(abstract), inputs, rng, mesh, on_start=lambda shapes: _say(
        f"compiling the train step for {shapes} (once per input shape)"))
  eval_fn = jax.jit(sharding.with_rules(functools.partial(
      eval_step.multiview_eval_step, graphdef=graphdef,
      mean=tuple(config.input.mean), std=tuple(config.input.std)), rules),
                    out_shardings=sharding.replicated(mesh))
  _say(f"datasets: opening {', '.join(names)} (the embedded ones are built on first use)")
  specs = pipeline.prepare_datasets(config)
  timing.mark("datasets")
  ckpt, start_step, state, resumed_meta = _restore_or_init(
      config, workdir, abstract, built.state_shardings, built.tx, read_only)
  timing.mark("state")
  writer = (metric_writers.MultiWriter([]) if read_only
            else writers.create_writer(workdir, jax.process_index()))
  return _Run(config, workdir, mesh, specs, names, built.mixture, state, start_step, step_fn,
              eval_fn, ckpt, writer, timing, read_only, rng=rng, resumed_meta=resumed_meta,
              rules=rules)


def _restore_or_init(config, workdir, abstract, state_shardings, tx, read_only: bool):
  """(checkpointer, start step, state, resumed meta): the resume order of the docstring."""
  ckpt_dir = str(workdir_lib.path(workdir, manager.CHECKPOINTS))
  if not read_only:
    workdir_lib.ensure_room_for_checkpoint(ckpt_dir, abstract)
  ckpt = manager.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
  resume_checks.check_checkpoint_layout(ckpt.directory, config.model.scan_layers)
  restored = ckpt.restore_latest(
      abstract, set_aside_damaged=not read_only and jax.process_index() == 0,
      check=functools.partial(resume_checks.check_resumable, config, abstract))
  if restored is not None:
    start_step, state, meta = restored
    _say(f"resuming from checkpoint step {start_step} in {ckpt.directory}")
    return ckpt, start_step, state, meta
  if read_only:
    ckpt.close()
    raise NoCheckpointError(f"no checkpoint that restores in {ckpt.directory}: train first "
                            "(--mode=train) or point --workdir at a training run.")
  state = train_state.init_train_state(jax.random.key(config.seed), config.model,
                                       dict(_num_classes(config)), tx, state_shardings)
  if config.get("init_from"):
    state = pretrained_loader.init_state_from_pretrained(config, state, state_shardings.params)
  return ckpt, 0, state, None


def _num_classes(config) -> dict[str, int]:
  return {name: ds.num_classes for name, ds in config.datasets.items()}


def _train_loop(run: _Run) -> dict[str, float]:
  """Steps `start_step` .. `total_steps`; returns each dataset's last train top-1."""
  cfg = run.config
  meta = run.resumed_meta or {}
  run.streams = streams_lib.TrainStreams(run.specs, cfg, run.mixture, run.start_step, meta)
  index = {name: i for i, name in enumerate(run.names)}
  rng = run.rng
  tracked = train_metrics.TrainMetrics(
      nonfinite.NonFiniteMonitor(cfg.nonfinite, meta.get("nonfinite")), meta.get("train_top1"))
  progress = periodic_actions.ReportProgress(num_train_steps=cfg.total_steps, writer=run.writer,
                                             every_steps=cfg.log_every or None)
  pending = None
  last_log = (run.start_step, time.monotonic())
  saved = run.start_step  # on disk, or (step 0) reproducible from the seed
  # Between steps the state is a flat list of arrays (train_step.TrainStep);
  # `run.state` is rebuilt from it only where a TrainState is needed.
  leaves = run.step_fn.flatten(run.state)
  with jax.set_mesh(run.mesh), preemption.PreemptionWatch() as preempt:
    for step in range(run.start_step, cfg.total_steps):
      if preempt.reached(step):
        if pending is not None:
          tracked.add(*pending)  # never save a state reached through a non-finite step
        if step != saved:
          run.state = run.step_fn.unflatten(leaves)
          _save_checkpoint(run, step, tracked)
        raise preemption.Preempted(step, run.ckpt.directory)
      names = run.mixture.datasets_at(step)
      batches = tuple(device.to_device(run.mesh, run.streams.next_batch(n), index[n], run.rules)
                      for n in names)
      run.timing.mark("first_batch")
      leaves, metrics = run.step_fn(leaves, batches, rng)
      if "first_step" not in run.timing.marks:  # one wait, for the start-up benchmark
        jax.block_until_ready(metrics)
        run.timing.mark("first_step")
      if pending is not None:
        tracked.add(*pending)  # the previous step: its result is ready by now
      pending, done = (step, names, metrics), step + 1
      progress(done)
      if not _due(done, cfg.log_every, cfg.total_steps) and not _due(
          done, cfg.checkpoint_every, cfg.total_steps) and not _due(done, cfg.eval_every, None):
        continue
      tracked.add(*pending)
      pending = None
      if _due(done, cfg.log_every, cfg.total_steps):
        last_log = _log_train(run, tracked, done, last_log)
      if _due(done, cfg.checkpoint_every, cfg.total_steps):
        run.state = run.step_fn.unflatten(leaves)
        _save_checkpoint(run, done, tracked)
        saved = done
      if _due(done, cfg.eval_every, None) and done < cfg.total_steps:
        run.state = run.step_fn.unflatten(leaves)
        _evaluate_all(run, run.state, done)
    run.state = run.step_fn.unflatten(leaves)
    if preempt.reached(cfg.total_steps):  # the last step is saved: skip the final evaluation
      raise preemption.Preempted(cfg.total_steps, run.ckpt.directory)
  run.timing.mark("trained")
  run.timing.compile_s.update(run.step_fn.compile_seconds)
  return tracked.last_top1


def _save_checkpoint(run: _Run, done: int, tracked: train_metrics.TrainMetrics) -> None:
  """Saves the state after `done` steps (asynchronously) with the run's bookkeeping.

  The meta is a plain JSON dict: add keys freely (readers use `.get`).
  """
  meta = {"step": done, "config": run.config.to_json(),
          # predict / init_from read these names.
          "class_names": {n: list(s.class_names) for n, s in run.specs.items()},
          # predict decodes a video as its dataset's videos were prepared.
          "prepared": {n: s.source.prepared for n, s in run.specs.items()},
          "input_position": dict(run.streams.positions),
          "stream_positions": run.streams.stream_positions(),
          "nonfinite": tracked.nonfinite.state(), "train_top1": dict(tracked.last_top1)}
  run.ckpt.save(done, run.state, meta)


def _due(done: int, every: int, last: int | None) -> bool:
  return (every > 0 and done % every == 0) or done == last


def _log_train(run: _Run, tracked: train_metrics.TrainMetrics, done: int, last_log):
  scalars = tracked.summary()
  for name, skipped in run.streams.skipped_records().items():
    scalars[f"train/{name}/skipped_records"] = float(skipped)
  run.writer.write_scalars(done, scalars)
  now = time.monotonic()
  steps_per_sec = (done - last_log[0]) / max(now - last_log[1], 1e-9)
  run.timing.steps_per_sec.append(steps_per_sec)
  eta = (run.config.total_steps - done) / max(steps_per_sec, 1e-9)
  per_dataset = "  ".join(
      f"{n}: loss {scalars[f'train/{n}/loss']:.3f} top1 {scalars[f'train/{n}/top1']:.2f}"
      for n in run.names if f"train/{n}/loss" in scalars)
  _say(f"step {done}/{run.config.total_steps}  {per_dataset}  "
       f"| {steps_per_sec:.2f} steps/s, ETA {eta:.0f}s")
  return done, now


def _evaluate_all(run: _Run, state, step: int) -> dict[str, dict[str, float]]:
  results = {}
  to_device = functools.partial(device.to_device, run.mesh, rules=run.rules)
  run.timing.mark("eval_start")
  with jax.set_mesh(run.mesh):
    for i, name in enumerate(run.names):
      if not run.specs[name].config.eval_split:
        continue  # e.g. ImageNet-21k: no held-out split
      if name not in run.eval_datasets:
        run.eval_datasets[name], _ = eval_data.eval_dataset(
            run.specs[name], shard_index=jax.process_index(),
            num_shards=jax.process_count())
      ds = run.eval_datasets[name]
      results[name] = eval_step.evaluate_dataset(
          run.eval_fn, state.params, ds.as_numpy_iterator(), i, to_device,
          expected_videos=run.specs[name].num_test_examples)
  run.timing.marks["eval_end"] = time.time()
  run.writer.write_scalars(step, table.scalars(results))
  not_evaluated = [n for n in run.names if n not in results]
  line = table.format_line(results)
  if not_evaluated:
    line += ("  " if line else "") + ", ".join(not_evaluated) + ": no eval split"
  _say(f"eval @ step {step}: {line}")
  return results


def _close(run: _Run) -> None:
  """Input pipelines first, then checkpoints (waiting for the last save), then writers."""
  if run.streams is not None:
    run.streams.close()
  run.eval_datasets.clear()
  run.ckpt.close()
  run.timing.mark("checkpoints_closed")
  run.writer.close()
  if not run.read_only and jax.process_index() == 0:
    run.timing.write(workdir_lib.path(run.workdir, workdir_lib.TIMING))
