"""The host loop: mixture of datasets -> jitted train step -> metrics, evals, checkpoints.

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
- each dataset's input position: the checkpoint meta's `stream_positions`
  (per input shard, the next record of its shuffled stream: skipped bad
  records included) and `input_position` (batches consumed per dataset,
  counted by the host loop; recomputed from the mixture's choices for
  checkpoints without it). The pipeline restarts there
  by a deterministic skip, not by tf.data iterator checkpointing: its state is
  a few integers identical on every host, and iterator checkpoints would hold
  the shuffle buffer's (decoded) examples, per host, in every checkpoint;
- the non-finite skip counters: the meta's `nonfinite` (nonfinite.py).
SIGTERM saves the current step and stops the run (preemption.py).

Metrics of step s are fetched to the host after step s+1 has been dispatched,
so the device never waits for the host; every fetched loss is checked, and all
pending ones are checked before a checkpoint is written, so a checkpoint never
holds a state reached through a non-finite loss.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import time

import jax
import numpy as np
from clu import periodic_actions
from jax.experimental import multihost_utils

from cover_jax.checkpoint import manager
from cover_jax.evaluation import dataset as eval_data, step as eval_step, table, views
from cover_jax.train import build, mixture, state as train_state
from cover_jax.parallel import sharding
from cover_jax.metrics import writers
from cover_jax.train import nonfinite, preemption
from cover_jax.checkpoint import resume_checks, workdir as workdir_checks
from cover_jax.input import device, pipeline, shards
from cover_jax.pretrained import loader as pretrained_loader
from cover_jax.train import step as train_step

NonFiniteLossError = nonfinite.NonFiniteLossError


class NoCheckpointError(FileNotFoundError):
  """Evaluation was asked for, but the workdir holds no checkpoint that restores."""


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
  eval_datasets: dict = dataclasses.field(default_factory=dict)  # built on first use
  skip_counters: dict = dataclasses.field(default_factory=dict)  # dataset -> {shard: SkipCounter}
  resumed_meta: dict | None = None  # meta of the checkpoint resumed from
  rules: tuple = sharding.LOGICAL_AXIS_RULES  # logical axis -> mesh axes (config.axis_rules)


@dataclasses.dataclass
class Outcome:
  """What a training run ends with."""
  results: dict[str, dict[str, float]]  # dataset -> eval_step.evaluate_dataset's dict
  train_top1: dict[str, float]          # dataset -> train top-1 of the last logging window
  train_step_compilations: int          # one per distinct input shape


def train_and_evaluate(config, workdir: str) -> Outcome:
  """Trains per `config`, evaluates every dataset, returns the final results."""
  run = _setup(config, workdir)
  try:
    train_top1 = _train_loop(run)
    compilations = run.step_fn.compilations()  # one per distinct input shape
    logging.info("train step compiled %d time(s)", compilations)
    results = _evaluate_all(run, run.state, step=config.total_steps)
    table = _table(run, results, train_top1)
    if jax.process_index() == 0:
      print("\nFinal accuracy after %d steps:\n%s" % (config.total_steps, table), flush=True)
      with open(os.path.join(workdir, "results.txt"), "w") as f:
        f.write(table + "\n")
    return Outcome(results, train_top1, compilations)
  finally:
    run.ckpt.close()
    run.writer.close()


def evaluate_checkpoint(config, workdir: str) -> dict[str, dict[str, float]]:
  """Evaluates the latest checkpoint in `workdir` on every dataset's test split."""
  run = _setup(config, workdir, require_checkpoint=True)
  try:
    results = _evaluate_all(run, run.state, step=run.start_step)
    if jax.process_index() == 0:
      print(_table(run, results, {}), flush=True)
    return results
  finally:
    run.ckpt.close()
    run.writer.close()


def _table(run: _Run, results, train_top1) -> str:
  views_of = {n: f"{views.num_views(s.config) // s.config.eval_crops}x{s.config.eval_crops}"
              for n, s in run.specs.items()}
  return table.format_table(results, {n: s.config.num_classes for n, s in run.specs.items()},
                            train_top1, views_of)


def _setup(config, workdir: str, require_checkpoint: bool = False) -> _Run:
  workdir_checks.ensure_writable(workdir)
  mesh = sharding.make_mesh(config.mesh_shape)
  rules = sharding.rules_from_config(config.axis_rules)
  logging.info("process %d of %d, %d device(s), mesh %s", jax.process_index(),
               jax.process_count(), jax.device_count(), dict(mesh.shape))
  specs = pipeline.prepare_datasets(config)
  built = build.build_step(config, mesh, rules)  # what benchmarks/aot_compile.py compiles
  names, tx, graphdef = built.names, built.tx, built.graphdef
  abstract, state_shardings = built.abstract, built.state_shardings
  num_classes = {n: specs[n].config.num_classes for n in names}
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not require_checkpoint:
    workdir_checks.ensure_room_for_checkpoint(ckpt_dir, abstract)
  ckpt = manager.Checkpointer(ckpt_dir, max_to_keep=config.keep_checkpoints)
  resume_checks.check_checkpoint_layout(ckpt.directory, config.model.scan_layers)
  restored = ckpt.restore_latest(
      abstract, set_aside_damaged=not require_checkpoint and jax.process_index() == 0,
      check=functools.partial(resume_checks.check_resumable, config, abstract))
  resumed_meta = None
  if restored is not None:
    start_step, state, resumed_meta = restored
    logging.info("resuming from checkpoint step %d in %s", start_step, ckpt.directory)
  elif require_checkpoint:
    raise NoCheckpointError(f"no checkpoint that restores in {ckpt.directory}: train first "
                            "(--mode=train) or point --workdir at a training run.")
  else:
    start_step = 0
    state = train_state.init_train_state(jax.random.key(config.seed), config.model,
                                         num_classes, tx, state_shardings)
    if config.get("init_from"):
      state = pretrained_loader.init_state_from_pretrained(config, state, state_shardings.params)
  replicated = sharding.replicated(mesh)
  eval_fn = jax.jit(sharding.with_rules(functools.partial(
      eval_step.multiview_eval_step, graphdef=graphdef,
      mean=tuple(config.input.mean), std=tuple(config.input.std)), rules),
                    out_shardings=replicated)
  writer = writers.create_writer(workdir, jax.process_index())
  return _Run(config, workdir, mesh, specs, names, built.mixture, state, start_step, built.step,
              eval_fn, ckpt, writer, resumed_meta=resumed_meta, rules=rules)


def _input_positions(run: _Run) -> dict[str, int]:
  """Batches each dataset gave to the steps before `run.start_step`."""
  saved = (run.resumed_meta or {}).get("input_position")
  if saved is not None and set(saved) >= set(run.specs):
    return {name: int(saved[name]) for name in run.specs}
  if run.start_step:  # a checkpoint written before positions were saved
    logging.info("recomputing input positions from the mixture's choices of %d steps",
                 run.start_step)
  consumed = run.mixture.batches_consumed(run.start_step)
  return {name: consumed.get(name, 0) for name in run.specs}


def _train_iterators(run: _Run, consumed: dict[str, int]) -> dict:
  """This process's share of every dataset's batches (input/shards.py)."""
  cfg = run.config
  num_shards = shards.resolve_num_shards(cfg.input.shards, jax.process_count())
  owned = shards.owned_shards(num_shards, jax.process_index(), jax.process_count())

  saved = (run.resumed_meta or {}).get("stream_positions") or {}

  def reader(spec):
    def read(shard):
      # Where this shard's stream stopped (skips included); older checkpoints: from batches.
      positions = saved.get(spec.name)
      start = (int(positions[shard]) if positions and len(positions) == num_shards
               else consumed[spec.name] * (spec.config.batch_size // num_shards))
      batches = pipeline.train_dataset(
          spec, global_seed=cfg.seed, shard_index=shard, num_shards=num_shards,
          start_position=start).as_numpy_iterator()
      counter = pipeline.SkipCounter(spec.name, batches, start)
      run.skip_counters.setdefault(spec.name, {})[shard] = counter
      return counter
    return read
  return {name: shards.concatenated(reader(spec), owned) for name, spec in run.specs.items()}


class _TrainMetrics:
  """Per-dataset running means of fetched train metrics, with NaN checks."""

  def __init__(self, monitor: nonfinite.NonFiniteMonitor):
    self.reset()
    self.last_top1: dict[str, float] = {}
    self.nonfinite = monitor

  def reset(self):
    self.sums = collections.defaultdict(lambda: np.zeros(3))  # loss, top1, count
    self.extra = collections.defaultdict(list)

  def add(self, step: int, names, metrics) -> None:
    metrics = jax.device_get(metrics)
    if not self.nonfinite.check(step, names, metrics):  # raises unless the policy skips
      return
    for name, loss, top1 in zip(names, metrics["batch_loss"], metrics["batch_top1"]):
      self.sums[name] += (loss, top1, 1)
    self.extra["grad_norm"].append(metrics["grad_norm"])
    self.extra["learning_rate"].append(metrics["learning_rate"])

  def summary(self) -> dict[str, float]:
    out = {}
    for name, (loss, top1, count) in sorted(self.sums.items()):
      out[f"train/{name}/loss"] = loss / count
      out[f"train/{name}/top1"] = top1 / count
      self.last_top1[name] = top1 / count
    for key, values in self.extra.items():
      out[f"train/{key}"] = float(np.mean(values))
    if self.nonfinite.skipped_total:
      out["train/nonfinite_skipped_steps"] = float(self.nonfinite.skipped_total)
    self.reset()
    return out


def _train_loop(run: _Run) -> dict[str, float]:
  cfg = run.config
  positions = _input_positions(run)
  iterators = _train_iterators(run, positions)
  index = {name: i for i, name in enumerate(run.names)}
  rng = jax.random.key(cfg.seed + 1)
  tracked = _TrainMetrics(nonfinite.NonFiniteMonitor(
      cfg.nonfinite, (run.resumed_meta or {}).get("nonfinite")))
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
          _save_checkpoint(run, step, positions, tracked)
        raise preemption.Preempted(step, run.ckpt.directory)
      names = run.mixture.datasets_at(step)
      batches = tuple(device.to_device(run.mesh, next(iterators[n]), index[n], run.rules)
                      for n in names)
      for name in names:
        positions[name] += 1
      leaves, metrics = run.step_fn(leaves, batches, rng)
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
        _save_checkpoint(run, done, positions, tracked)
        saved = done
      if _due(done, cfg.eval_every, None) and done < cfg.total_steps:
        run.state = run.step_fn.unflatten(leaves)
        _evaluate_all(run, run.state, done)
    run.state = run.step_fn.unflatten(leaves)
    if preempt.reached(cfg.total_steps):  # the last step is saved: skip the final evaluation
      raise preemption.Preempted(cfg.total_steps, run.ckpt.directory)
  return tracked.last_top1


def _save_checkpoint(run: _Run, done: int, positions: dict[str, int],
                     tracked: _TrainMetrics) -> None:
  """Saves the state after `done` steps (asynchronously) with the run's bookkeeping.

  The meta is a plain JSON dict: add keys freely (readers use `.get`).
  """
  meta = {"step": done, "config": run.config.to_json(),
          # predict / init_from read these names.
          "class_names": {n: list(s.class_names) for n, s in run.specs.items()},
          # predict decodes a video as its dataset's videos were prepared.
          "prepared": {n: s.source.prepared for n, s in run.specs.items()},
          "input_position": dict(positions), "stream_positions": _stream_positions(run),
          "nonfinite": tracked.nonfinite.state()}
  run.ckpt.save(done, run.state, meta)


def _per_shard_totals(run: _Run, value_of) -> dict[str, np.ndarray]:
  """Each dataset's `value_of(counter)` per input shard, from every process.

  A collective when there are several processes (all of them call it): each
  process holds the counters of only the shards it reads.
  """
  names = sorted(run.skip_counters)
  num_shards = shards.resolve_num_shards(run.config.input.shards, jax.process_count())
  local = np.zeros((len(names), num_shards), np.int32)  # every shard is read by one process
  for i, name in enumerate(names):
    for shard, counter in run.skip_counters[name].items():
      local[i, shard] = value_of(counter)
  if jax.process_count() > 1:
    local = np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)
  return {name: local[i] for i, name in enumerate(names)}


def _stream_positions(run: _Run) -> dict[str, list[int]]:
  """Each dataset's next stream position per input shard (process 0 writes the meta)."""
  return {name: [int(p) for p in positions]
          for name, positions in _per_shard_totals(run, lambda c: c.next_position).items()}


def _due(done: int, every: int, last: int | None) -> bool:
  return (every > 0 and done % every == 0) or done == last


def _log_train(run: _Run, tracked: _TrainMetrics, done: int, last_log):
  scalars = tracked.summary()
  # Records skipped since the run (re)started, summed over every process's shards.
  for name, skipped in _per_shard_totals(run, lambda c: c.skipped).items():
    scalars[f"train/{name}/skipped_records"] = float(skipped.sum())
  run.writer.write_scalars(done, scalars)
  now = time.monotonic()
  steps_per_sec = (done - last_log[0]) / max(now - last_log[1], 1e-9)
  eta = (run.config.total_steps - done) / max(steps_per_sec, 1e-9)
  per_dataset = "  ".join(
      f"{n}: loss {scalars[f'train/{n}/loss']:.3f} top1 {scalars[f'train/{n}/top1']:.2f}"
      for n in run.names if f"train/{n}/loss" in scalars)
  if jax.process_index() == 0:
    print(f"step {done}/{run.config.total_steps}  {per_dataset}  "
          f"| {steps_per_sec:.2f} steps/s, ETA {eta:.0f}s", flush=True)
  return done, now


def _evaluate_all(run: _Run, state, step: int) -> dict[str, dict[str, float]]:
  results = {}
  to_device = functools.partial(device.to_device, run.mesh, rules=run.rules)
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
  run.writer.write_scalars(step, table.scalars(results))
  if jax.process_index() == 0:
    print(f"eval @ step {step}: {table.format_line(results)}", flush=True)
  return results
