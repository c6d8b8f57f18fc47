r"""Compiled memory and step time of the train step for each memory knob.

For each model (`B/16` at 8x224, and a small CPU-sized one) and each knob
setting (remat none/full/dots, bf16 compute, scan over layers, gradient
accumulation), compiles the real train step (AdamW, one dataset head) for the
local devices, prints what XLA's `memory_analysis()` says per device, and
times a few steps:

  python benchmarks/memory.py                       # both models, all knobs
  python benchmarks/memory.py --models=small --steps=5
  python benchmarks/memory.py --models=B/16 --batch=16 --steps=3    # on an accelerator

Columns (MB per device): `temp` is XLA's scratch memory, i.e. activations
kept for the backward pass plus temporaries: what remat, accumulation and
bf16 act on; `state` is the arguments (parameters, optimizer state, batch);
`peak` is XLA's peak estimate (or state + output + temp where the backend
gives none). Step time is the median over `--steps` steps after a warm-up
(0 skips timing). Runs unchanged on CPU, GPU and TPU; the device kind is in
the table's title. Rows compile one after another; nothing is cached.

Note (CPU): XLA:CPU schedules the recomputation of an unrolled remat loop
early and so keeps every activation; there remat only pays with
`scan_layers` (the scan forces recomputation inside the backward loop). On
GPU/TPU both forms work.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cover_jax.config import defaults  # noqa: E402
from cover_jax.train import optim, state as train_state  # noqa: E402
from cover_jax.parallel import sharding  # noqa: E402
from cover_jax.train.step import StepSettings, bind  # noqa: E402

# name -> (model config fields, default global batch)
MODELS = {
    "B/16": (dict(variant="B/16", image_size=224, num_frames=8), 2),
    "small": (dict(variant="Mu/8", image_size=64, num_frames=8, depth=6), 16),
}


@dataclasses.dataclass(frozen=True)
class Knob:
  name: str
  remat: str = "none"
  scan_layers: bool = False
  dtype: str = "float32"
  grad_accum_steps: int = 1


KNOBS = (
    Knob("baseline (f32)"),
    Knob("remat=full", remat="full"),
    Knob("remat=dots", remat="dots"),
    Knob("scan", scan_layers=True),
    Knob("scan + remat=full", remat="full", scan_layers=True),
    Knob("scan + remat=dots", remat="dots", scan_layers=True),
    Knob("bf16 compute", dtype="bfloat16"),
    Knob("grad_accum=2", grad_accum_steps=2),
)


def compile_step(model_fields: dict, knob: Knob, batch: int, mesh):
  """(compiled step, abstract state, abstract batch) for one model and knob."""
  model = defaults.model_config(**model_fields, remat=knob.remat,
                                       scan_layers=knob.scan_layers, dtype=knob.dtype)
  opt = defaults.optimizer_config(warmup_steps=1)
  tx = optim.build_optimizer(opt, 100)
  classes = {"video": 400}
  graphdef, abstract, shardings = train_state.abstract_train_state(model, classes, tx, mesh)
  settings = StepSettings(("video",), (0.0,), micro_batches=knob.grad_accum_steps)
  step = bind(graphdef, tx, settings, optim.learning_rate_schedule(opt, 100))
  shape = (batch, model.num_frames, model.image_size, model.image_size, 3)
  batch_abstract = {
      "video": jax.ShapeDtypeStruct(shape, np.float32, sharding=sharding.batch_sharding(mesh, 5)),
      "label": jax.ShapeDtypeStruct((batch,), np.int32, sharding=sharding.batch_sharding(mesh, 1)),
      "dataset_index": jax.ShapeDtypeStruct((), np.int32, sharding=sharding.replicated(mesh))}
  jitted = jax.jit(step, out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: no device is touched
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))
  with jax.set_mesh(mesh):
    compiled = jitted.lower(abstract, (batch_abstract,), key).compile()
  return compiled, (model, classes, tx, shardings), batch_abstract


def memory_mb(compiled) -> dict[str, float]:
  m = compiled.memory_analysis()
  fallback = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + \
      m.temp_size_in_bytes
  # Some backends (CPU) report no real peak; then state + output + temp bounds it.
  peak = max(getattr(m, "peak_memory_in_bytes", 0) or 0, fallback)
  return {"temp": m.temp_size_in_bytes / 2**20, "state": m.argument_size_in_bytes / 2**20,
          "peak": peak / 2**20}


def time_steps(compiled, built, batch_abstract, mesh, steps: int) -> float | None:
  """Median seconds per step over `steps` steps after one warm-up step."""
  if steps <= 0:
    return None
  model, classes, tx, shardings = built
  state = train_state.init_train_state(jax.random.key(0), model, classes, tx, shardings)
  rng = np.random.default_rng(0)
  batch = {k: jax.device_put(rng.normal(size=s.shape).astype(s.dtype) if s.ndim == 5
                             else np.zeros(s.shape, s.dtype), s.sharding)
           for k, s in batch_abstract.items()}
  times = []
  with jax.set_mesh(mesh):
    for i in range(steps + 1):
      start = time.perf_counter()
      state, metrics = compiled(state, (batch,), jax.random.key(1))
      jax.block_until_ready(metrics["loss"])
      if i:
        times.append(time.perf_counter() - start)
  return statistics.median(times)


def select_knobs(names: str) -> list[Knob]:
  """The knobs named (comma-separated; '' = all), baseline first; unknown names are an error."""
  if not names:
    return list(KNOBS)
  wanted = [n.strip() for n in names.split(",") if n.strip()]
  known = {k.name: k for k in KNOBS}
  unknown = [n for n in wanted if n not in known]
  if unknown:
    raise SystemExit(f"error: --knobs: unknown knob(s) {unknown}; known: {list(known)} "
                     "(quote names with spaces, e.g. --knobs='baseline (f32),scan')")
  return [k for k in KNOBS if k.name in wanted]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="small,B/16", help=f"comma-separated: {list(MODELS)}")
  parser.add_argument("--knobs", default="", help="comma-separated knob names (default: all)")
  parser.add_argument("--batch", type=int, default=0,
                      help="global batch (0: the model's default, times the device count)")
  parser.add_argument("--steps", type=int, default=2, help="timed steps per row (0: none)")
  args = parser.parse_args(argv)
  mesh = sharding.make_mesh((-1, 1, 1))  # data parallel over the local devices
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  knobs = select_knobs(args.knobs)
  for name in args.models.split(","):
    fields, default_batch = MODELS[name]
    batch = args.batch or default_batch * jax.device_count()
    print(f"\n{name} model, {fields['num_frames']}x{fields['image_size']}, global batch {batch}, "
          f"on {device} (MB per device)", flush=True)
    print(f"{'knob':<20} {'temp':>9} {'state':>9} {'peak':>9} {'s/step':>8} {'base/temp':>10}")
    base = None  # the baseline row's temp memory: the ratio column needs that row
    for knob in knobs:
      compiled, built, batch_abstract = compile_step(fields, knob, batch, mesh)
      mem = memory_mb(compiled)
      if knob is KNOBS[0]:
        base = mem["temp"]
      seconds = time_steps(compiled, built, batch_abstract, mesh, args.steps)
      ratio = "-" if base is None else f"{base / mem['temp']:.2f}x"
      step_s = "-" if seconds is None else f"{seconds:.3f}"
      print(f"{knob.name:<20} {mem['temp']:>9.1f} {mem['state']:>9.1f} {mem['peak']:>9.1f} "
            f"{step_s:>8} {ratio:>10}", flush=True)
      del compiled


if __name__ == "__main__":
  main()
