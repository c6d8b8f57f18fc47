"""The host loop: mixture of datasets -> jitted train step -> metrics, evals, checkpoints.

Resume order (the one place it is decided): the newest checkpoint in
`workdir/checkpoints` that restores, else a fresh initialisation from
`config.seed`. The input pipelines then skip exactly the batches that the
restored steps consumed (recomputed from the mixture's (seed, step) choices).

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

from cover_jax import checkpoint, evaluate, mixture, optim, sharding, train_state, writers
from cover_jax.data import pipeline
from cover_jax.train_step import HeadSettings, bind_train_step, eval_step


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN/Inf loss; the last good checkpoint is kept."""


class NoCheckpointError(FileNotFoundError):
  """Evaluation was asked for, but the workdir holds no checkpoint that restores."""


@dataclasses.dataclass
class _Run:
  """Everything the loop needs, built once by `_setup`."""
  config: object
  workdir: str
  mesh: object
  specs: dict
  heads: HeadSettings
  mixture: mixture.DatasetMixture
  state: object
  start_step: int
  step_fn: object
  eval_fn: object
  ckpt: checkpoint.Checkpointer
  writer: object
  eval_datasets: dict = dataclasses.field(default_factory=dict)  # built on first use


@dataclasses.dataclass
class Outcome:
  """What a training run ends with."""
  results: dict[str, dict[str, float]]  # dataset -> test top1/top5/loss/num_examples
  train_top1: dict[str, float]          # dataset -> train top-1 of the last logging window
  train_step_compilations: int          # one per distinct input shape


def train_and_evaluate(config, workdir: str) -> Outcome:
  """Trains per `config`, evaluates every dataset, returns the final results."""
  run = _setup(config, workdir)
  try:
    train_top1 = _train_loop(run)
    # jit's own cache size (JAX-internal API): one entry per compiled signature.
    compilations = run.step_fn._cache_size()  # pylint: disable=protected-access
    logging.info("train step compiled %d time(s)", compilations)
    results = _evaluate_all(run, run.state, step=config.total_steps)
    table = evaluate.format_table(results, {n: s.config.num_classes for n, s in run.specs.items()},
                                  train_top1)
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
      print(evaluate.format_table(results, {n: s.config.num_classes for n, s in run.specs.items()},
                                  {}), flush=True)
    return results
  finally:
    run.ckpt.close()
    run.writer.close()


def _setup(config, workdir: str, require_checkpoint: bool = False) -> _Run:
  os.makedirs(workdir, exist_ok=True)
  mesh = sharding.make_mesh(config.mesh_shape)
  logging.info("process %d of %d, %d device(s), mesh %s", jax.process_index(),
               jax.process_count(), jax.device_count(), dict(mesh.shape))
  specs = pipeline.prepare_datasets(config)
  names = tuple(sorted(specs))
  heads = HeadSettings(names, tuple(float(specs[n].config.label_smoothing) for n in names))
  num_classes = {n: specs[n].config.num_classes for n in names}
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  graphdef, abstract, state_shardings = train_state.abstract_train_state(
      config.model, num_classes, tx, mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.keep_checkpoints)
  restored = ckpt.restore_latest(
      abstract, set_aside_damaged=not require_checkpoint and jax.process_index() == 0)
  if restored is not None:
    start_step, state, _ = restored
    logging.info("resuming from checkpoint step %d in %s", start_step, ckpt.directory)
  elif require_checkpoint:
    raise NoCheckpointError(f"no checkpoint that restores in {ckpt.directory}: train first "
                            "(--mode=train) or point --workdir at a training run.")
  else:
    start_step = 0
    state = train_state.init_train_state(jax.random.key(config.seed), config.model,
                                         num_classes, tx, state_shardings)
  mix = mixture.DatasetMixture({n: specs[n].config.weight for n in names}, config.mixture,
                               config.seed)
  names_per_step = mix.datasets_at(0)
  step = bind_train_step(graphdef, tx, heads, mix.loss_weights(names_per_step),
                         optim.learning_rate_schedule(config.optimizer, config.total_steps))
  replicated = sharding.replicated(mesh)
  step_fn = jax.jit(step, out_shardings=(state_shardings, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, graphdef=graphdef, heads=heads),
                    out_shardings=replicated)
  writer = writers.create_writer(workdir, jax.process_index())
  return _Run(config, workdir, mesh, specs, heads, mix, state, start_step, step_fn, eval_fn,
              ckpt, writer)


def _to_device(mesh, batch: dict, dataset_index: int) -> dict:
  """Process-local host batch -> global arrays sharded over the batch axes."""
  out = {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim), v)
         for k, v in batch.items()}
  out["dataset_index"] = jax.make_array_from_process_local_data(
      sharding.replicated(mesh), np.asarray(dataset_index, np.int32))
  return out


def _train_iterators(run: _Run) -> dict:
  consumed = run.mixture.batches_consumed(run.start_step)
  cfg = run.config
  return {
      name: pipeline.train_dataset(
          spec, global_seed=cfg.seed, mean=cfg.input.mean, std=cfg.input.std,
          process_index=jax.process_index(), process_count=jax.process_count(),
          start_batch=consumed[name]).as_numpy_iterator()
      for name, spec in run.specs.items()}


class _TrainMetrics:
  """Per-dataset running means of fetched train metrics, with NaN checks."""

  def __init__(self):
    self.reset()
    self.last_top1: dict[str, float] = {}

  def reset(self):
    self.sums = collections.defaultdict(lambda: np.zeros(3))  # loss, top1, count
    self.extra = collections.defaultdict(list)

  def add(self, step: int, names, metrics) -> None:
    metrics = jax.device_get(metrics)
    for name, loss, top1 in zip(names, metrics["batch_loss"], metrics["batch_top1"]):
      if not np.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite loss {float(loss)} at step {step} on dataset {name!r}; stopping. "
            "The latest checkpoint is from before this step. Lower "
            "--config.optimizer.learning_rate or raise warmup_steps and resume.")
      self.sums[name] += (loss, top1, 1)
    if not np.isfinite(metrics["grad_norm"]):
      raise NonFiniteLossError(f"non-finite gradient norm at step {step} on {names}; stopping.")
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
    self.reset()
    return out


def _train_loop(run: _Run) -> dict[str, float]:
  cfg = run.config
  iterators = _train_iterators(run)
  index = {name: i for i, name in enumerate(run.heads.dataset_names)}
  rng = jax.random.key(cfg.seed + 1)
  tracked = _TrainMetrics()
  progress = periodic_actions.ReportProgress(num_train_steps=cfg.total_steps, writer=run.writer,
                                             every_steps=cfg.log_every or None)
  pending = None
  last_log = (run.start_step, time.monotonic())
  with jax.set_mesh(run.mesh):
    for step in range(run.start_step, cfg.total_steps):
      names = run.mixture.datasets_at(step)
      batches = tuple(_to_device(run.mesh, next(iterators[n]), index[n]) for n in names)
      run.state, metrics = run.step_fn(run.state, batches, rng)
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
        run.ckpt.save(done, run.state, {"step": done, "config": cfg.to_json()})
      if _due(done, cfg.eval_every, None) and done < cfg.total_steps:
        _evaluate_all(run, run.state, done)
  return tracked.last_top1


def _due(done: int, every: int, last: int | None) -> bool:
  return (every > 0 and done % every == 0) or done == last


def _log_train(run: _Run, tracked: _TrainMetrics, done: int, last_log):
  scalars = tracked.summary()
  run.writer.write_scalars(done, scalars)
  now = time.monotonic()
  steps_per_sec = (done - last_log[0]) / max(now - last_log[1], 1e-9)
  eta = (run.config.total_steps - done) / max(steps_per_sec, 1e-9)
  per_dataset = "  ".join(
      f"{n}: loss {scalars[f'train/{n}/loss']:.3f} top1 {scalars[f'train/{n}/top1']:.2f}"
      for n in run.heads.dataset_names if f"train/{n}/loss" in scalars)
  if jax.process_index() == 0:
    print(f"step {done}/{run.config.total_steps}  {per_dataset}  "
          f"| {steps_per_sec:.2f} steps/s, ETA {eta:.0f}s", flush=True)
  return done, now


def _evaluate_all(run: _Run, state, step: int) -> dict[str, dict[str, float]]:
  cfg = run.config
  results = {}
  to_device = functools.partial(_to_device, run.mesh)
  with jax.set_mesh(run.mesh):
    for i, name in enumerate(run.heads.dataset_names):
      if name not in run.eval_datasets:
        run.eval_datasets[name], _ = pipeline.eval_dataset(
            run.specs[name], mean=cfg.input.mean, std=cfg.input.std,
            process_index=jax.process_index(), process_count=jax.process_count())
      ds = run.eval_datasets[name]
      results[name] = evaluate.evaluate_dataset(run.eval_fn, state.params,
                                                ds.as_numpy_iterator(), i, to_device)
  scalars = {f"eval/{n}/{k}": v for n, r in results.items() for k, v in r.items()
             if k != "num_examples"}
  run.writer.write_scalars(step, scalars)
  if jax.process_index() == 0:
    print(f"eval @ step {step}: " + "  ".join(
        f"{n}: top1 {r['top1']:.3f} top5 {r['top5']:.3f}" for n, r in results.items()),
          flush=True)
  return results
