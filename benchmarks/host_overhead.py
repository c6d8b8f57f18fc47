r"""How much of a training run is the compiled step, and how much the host: one table.

Times, for a config's datasets and mixture (the demo's by default, the README's
main job), in one process and one after another:

  pipeline alone   the input pipelines producing the batches of N steps of
                   the mixture (host numpy batches, nothing on the devices)
  step alone       the compiled train step over the same N batches, already
                   on the devices (one dispatch per step, one wait at the end)
  per dataset      the step alone for each dataset's batch shape
  loop-like        what the trainer's loop does per step: the next batch of
                   each of the step's datasets, onto the devices, the step

If "loop-like" is close to "step alone", the host's work (decoding,
augmenting, copying batches, dispatching) overlaps the step and the run's
speed is the compiled step's: only a faster step makes the run faster.

  python benchmarks/host_overhead.py --config=configs/demo.py          # the demo, 400 steps
  python benchmarks/host_overhead.py --config=configs/demo.py:tiny=true --steps=20   # smoke run

Any config field can be overridden (--config.data_dir=DIR: the embedded
datasets are built there if missing). Numbers on a shared machine
move by 10-30% between runs: compare rows of the same run.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cover_jax.input import device, pipeline  # noqa: E402
from cover_jax.parallel import sharding  # noqa: E402
from cover_jax.train import build, state as train_state, streams as streams_lib  # noqa: E402


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 400, "steps of the mixture timed per row")
flags.mark_flags_as_required(["config"])


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main(argv) -> None:
  del argv
  config, n = _CONFIG.value, _STEPS.value
  specs = pipeline.prepare_datasets(config)
  mesh = sharding.make_mesh(config.mesh_shape)
  rules = sharding.rules_from_config(config.axis_rules)
  built = build.build_step(config, mesh, rules)
  index = {name: i for i, name in enumerate(built.names)}
  streams = streams_lib.TrainStreams(specs, config, built.mixture, 0, None)
  steps = [built.mixture.datasets_at(s) for s in range(n)]
  for name in built.names:  # fill the prefetch buffers first
    for _ in range(10):
      streams.next_batch(name)
  host = []
  rows = [("pipeline alone", _timed(lambda: host.extend(
      tuple(streams.next_batch(d) for d in names) for names in steps)), n)]
  state = train_state.init_train_state(jax.random.key(0), config.model,
                                       {d: config.datasets[d].num_classes for d in built.names},
                                       built.tx, built.state_shardings)
  leaves, rng = [built.step.flatten(state)], jax.random.key(1)

  def run(batches_of_steps):
    for batches in batches_of_steps:
      leaves[0], _ = built.step(leaves[0], batches, rng)
    jax.block_until_ready(leaves[0])

  with jax.set_mesh(mesh):
    on_device = [tuple(device.to_device(mesh, b, index[d], rules) for d, b in zip(names, batches))
                 for names, batches in zip(steps, host)]
    run(on_device[:20])  # compile every shape, warm up
    rows.append(("step alone", _timed(lambda: run(on_device)), n))
    for names in sorted(set(steps)):
      same = [b for s, b in zip(steps, on_device) if s == names][:40]
      rows.append((f"  {'+'.join(names)} ({steps.count(names) / n:.0%} of steps)",
                   _timed(lambda: run(same)), len(same)))
    rows.append(("loop-like", _timed(lambda: run(
        tuple(device.to_device(mesh, streams.next_batch(d), index[d], rules) for d in names)
        for names in steps)), n))
  streams.close()
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  print(f"{config_file}, {n} steps, {jax.device_count()} {jax.devices()[0].platform} "
        f"device(s), {os.cpu_count()} cores")
  print(f"{'':<36}{'ms/step':>10}{'steps/s':>10}")
  for label, seconds, count in rows:
    print(f"{label:<36}{seconds / count * 1e3:>10.1f}{count / seconds:>10.1f}")


if __name__ == "__main__":
  app.run(main)
