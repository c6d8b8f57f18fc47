r"""Ahead-of-time check: compile a config's train step for TPU slices you do not have.

JAX describes a TPU topology (`jax.experimental.topologies`) from `libtpu`
alone, without the hardware. The train step is built from the config exactly
as the trainer builds it (`cover_jax.train.build.build_step`: the config's
model, optimizer, mixture, mesh and axis rules; the datasets' batch sizes,
frames and crops), lowered for a mesh of those devices and compiled; XLA's
memory analysis says what one chip will need, so an out-of-memory shows up
here and not after paying for a pod. One compile per distinct step shape
(mixture 'all': one step holding a batch of every dataset).

Needs `libtpu` in a venv of its own (TensorFlow is not needed, nor installed):

  python3 -m venv .venv-aot && .venv-aot/bin/pip install "jax[tpu]==0.10.2" flax==0.12.8 \
      optax==0.2.8 ml-collections==1.1.0
  JAX_PLATFORMS=cpu nice -n 19 .venv-aot/bin/python benchmarks/aot_compile.py \
      --config=configs/cover.py:variant=B/16 --config.model.scan_layers=True \
      --config.model.remat=full --topologies=v5e:4x4,v4:2x2x2 --json=/tmp/b16.json

`--topologies=cpu` compiles for the local devices instead (a smoke run without
libtpu: tests/test_aot_compile.py). docs/scaling.md has the table for the
CoVeR recipe.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import memory  # noqa: E402
from cover_jax.parallel import sharding  # noqa: E402
from cover_jax.train import build  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_TOPOLOGIES = flags.DEFINE_list("topologies", ["v5e:4x4"],
                                "TPU type:chips, e.g. v5e:4x4,v4:2x2x2; 'cpu': the local devices")
_JSON = flags.DEFINE_string("json", "", "also append one JSON line per compile to this file")
flags.mark_flags_as_required(["config"])

# HBM per chip, GiB (Cloud TPU system architecture pages).
HBM_GIB = {"TPU v5 lite": 16, "TPU v4": 32, "TPU v5": 95, "TPU v6 lite": 32}


def topology_devices(name: str) -> list:
  if name == "cpu":
    return jax.devices()
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  # v4 and v5p chips have two cores; the trainer runs one device per chip (megacore).
  options = {"chip_config_name": "megacore"} if name.startswith(("v4", "v5p")) else {}
  dims = [int(d) for d in name.split(":")[1].split("x")]
  if int(np.prod(dims)) < 4:  # a host of fewer chips than libtpu's default 2x2x1 (v5e:1x1)
    options["chips_per_host_bounds"] = tuple(dims + [1] * (3 - len(dims)))
  return list(topologies.get_topology_desc(name, "tpu", **options).devices)


def batch_problems(config, datasets, mesh) -> list[str]:
  """Datasets whose global batch does not split over the batch axes of `mesh`."""
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  return [f"{n}: batch {config.datasets[n].batch_size} does not split over {batch_shards} "
          "batch shards" for n in datasets if config.datasets[n].batch_size % batch_shards]


def compile_step(config, topology: str, datasets: tuple[str, ...], built, mesh, rules) -> dict:
  """Compiles the step on `datasets` for `mesh`; memory per chip (MiB) and compile seconds."""
  batches = build.step_batches(config, datasets, mesh, rules)
  leaves = built.step.flatten(built.abstract)
  key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: no device is touched
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
  start = time.perf_counter()
  try:
    with jax.set_mesh(mesh):
      compiled = built.step.jitted.lower(leaves, batches, key).compile()
    mem = memory.memory_mb(compiled)
  except jax.errors.JaxRuntimeError as e:
    mem = out_of_memory(str(e))
    if mem is None:
      raise
  kind = mesh.devices.flat[0].device_kind
  return {"topology": topology, "chips": mesh.size, "device_kind": kind,
          "mesh": dict(mesh.shape), "datasets": list(datasets),
          "per_chip_batch": {n: b["video"].shape[0] // (mesh.shape["data"] * mesh.shape["fsdp"])
                             for n, b in zip(datasets, batches)},
          "compile_s": time.perf_counter() - start, "hbm_gib": HBM_GIB.get(kind), **mem}


def out_of_memory(message: str) -> dict | None:
  """The memory a compile refused by the TPU compiler would need; None for other errors.

  XLA:TPU stops a compile whose temporaries exceed the chip's HBM ("the total
  memory required for HLO temporaries (24.81G) exceeds available HBM
  (15.75G)"): that is the answer this script is for, not a failure.
  """
  found = re.search(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", message)
  if "RESOURCE_EXHAUSTED" not in message or not found:
    return None
  temp_gib, usable_gib = (float(g) for g in found.groups())
  return {"temp": temp_gib * 1024, "state": None, "peak": None, "usable_gib": usable_gib,
          "error": message.strip().splitlines()[0]}


def describe(config) -> str:
  m = config.model
  return (f"{m.variant} {m.num_frames}x{m.image_size} {m.dtype}, remat={m.remat} "
          f"scan_layers={m.scan_layers} stochastic_depth={m.stochastic_depth}, "
          f"optimizer {config.optimizer.name}, mixture {config.mixture}, mesh_shape "
          f"{tuple(config.mesh_shape)}, batches "
          + ", ".join(f"{n} {ds.batch_size}x{ds.num_frames}x{ds.crop_size}"
                      for n, ds in sorted(config.datasets.items())))


def print_row(row: dict) -> None:
  per_chip = ", ".join(f"{n} {b}" for n, b in row["per_chip_batch"].items())
  head = (f"{row['topology']} ({row['chips']} x {row['device_kind']}, mesh {row['mesh']}); "
          f"per-chip batch {per_chip}: ")
  if row["peak"] is None:  # refused by the TPU compiler
    print(head + f"DOES NOT FIT: temporaries {row['temp'] / 1024:.2f} GiB > "
          f"{row['usable_gib']} GiB usable ({row['compile_s']:.0f} s)", flush=True)
    return
  fits = ("-" if row["hbm_gib"] is None else
          f"{'fits' if row['peak'] <= row['hbm_gib'] * 1024 else 'DOES NOT FIT'} "
          f"{row['hbm_gib']} GiB")
  gib = {k: row[k] / 1024 for k in ("state", "temp", "peak")}  # memory_mb gives MiB
  print(head + f"state {gib['state']:.2f} GiB, temp {gib['temp']:.2f} GiB, "
        f"peak {gib['peak']:.2f} GiB -> {fits}; compiled in {row['compile_s']:.0f} s", flush=True)


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  rules = sharding.rules_from_config(config.axis_rules)
  print(describe(config), flush=True)
  for topology in _TOPOLOGIES.value:
    mesh = sharding.make_mesh(config.mesh_shape, topology_devices(topology))
    built = build.build_step(config, mesh, rules)
    for datasets in build.distinct_steps(config, built):
      problems = batch_problems(config, datasets, mesh)
      if problems:
        print(f"{topology} ({mesh.size} chips): not compiled: {'; '.join(problems)}", flush=True)
        continue
      row = compile_step(config, topology, datasets, built, mesh, rules)
      row["config"] = describe(config)
      print_row(row)
      if _JSON.value:
        with open(_JSON.value, "a") as f:
          f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  app.run(main)
