"""The train step a config runs, built the one way the trainer builds it.

`build_step(config, mesh, rules)` turns a config into the optimizer, the
abstract (sharded) train state, the mixture that picks each step's datasets
and the `TrainStep` the loop calls. The host loop (loop.py) and the
ahead-of-time compile for TPU slices (benchmarks/aot_compile.py) both call
it, and `step_batches` describes the batches the input pipelines hand a
step, so what is compiled for a slice one has not got is what the trainer
would run there. Nothing here imports an input pipeline (no TensorFlow).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optax
from flax import nnx

from cover_jax.input import device
from cover_jax.parallel import sharding
from cover_jax.train import mixture as mixture_lib, optim, state as train_state
from cover_jax.train.step import StepSettings, TrainStep


@dataclasses.dataclass(frozen=True)
class BuiltStep:
  """What `build_step` returns; `abstract` holds shapes, dtypes and shardings only."""
  names: tuple[str, ...]  # the datasets, sorted: the heads' order
  tx: optax.GradientTransformation
  graphdef: nnx.GraphDef
  abstract: Any
  state_shardings: Any
  mixture: mixture_lib.DatasetMixture
  step: TrainStep


def build_step(config, mesh, rules: sharding.Rules) -> BuiltStep:
  """The optimizer, abstract state, mixture and train step of `config` on `mesh`."""
  names = tuple(sorted(config.datasets))
  num_classes = {n: config.datasets[n].num_classes for n in names}
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  graphdef, abstract, state_shardings = train_state.abstract_train_state(
      config.model, num_classes, tx, mesh, rules)
  mix = mixture_lib.DatasetMixture({n: config.datasets[n].weight for n in names},
                                   config.mixture, config.seed)
  # The loss weights of a step's batches are static: those of step 0's datasets
  # (in 'all' mode every step has the same datasets; in 'sample' each weight is 1).
  settings = StepSettings.from_config(config, names, mix.loss_weights(mix.datasets_at(0)))
  step = TrainStep(
      graphdef, tx, settings, optim.learning_rate_schedule(config.optimizer, config.total_steps),
      state_shardings=state_shardings, metrics_sharding=sharding.replicated(mesh), rules=rules)
  return BuiltStep(names, tx, graphdef, abstract, state_shardings, mix, step)


def step_batches(config, datasets: tuple[str, ...], mesh, rules: sharding.Rules) -> tuple:
  """Abstract batches of a step on `datasets`, as the loop puts them on the devices."""
  return tuple(device.abstract_batch(mesh, config.datasets[n].batch_size,
                                     config.datasets[n].num_frames, config.datasets[n].crop_size,
                                     rules)
               for n in datasets)


def distinct_steps(config, built: BuiltStep) -> list[tuple[str, ...]]:
  """The datasets of one step per distinct input shape: what a run compiles.

  'all' mode: one step of every dataset. 'sample' mode: one step per dataset
  with a weight, datasets of the same batch shape counted once (they share a
  compiled step: the head is chosen inside it).
  """
  if config.mixture == "all":
    return [built.mixture.datasets_at(0)]
  seen, out = set(), []
  for name, probability in zip(built.mixture.names, built.mixture.probabilities):
    ds = config.datasets[name]
    shape = (ds.batch_size, ds.num_frames, ds.crop_size)
    if probability > 0 and shape not in seen:
      seen.add(shape)
      out.append((name,))
  return out
