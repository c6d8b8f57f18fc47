r"""Ahead-of-time check: compile the train step for a TPU slice you do not have.

JAX describes a TPU topology (`jax.experimental.topologies`) from `libtpu`
alone, without the hardware; the train step is lowered and compiled for a
mesh of those devices, and XLA's memory analysis says what one chip will
need, so an out-of-memory shows up here and not after paying for a pod.

Needs `libtpu` (`pip install -e ".[tpu]"`, or `pip install "jax[tpu]==0.10.2"`
plus flax, optax, ml-collections in a venv of its own); it runs on a machine
without TPUs (TensorFlow is not needed).

  python benchmarks/aot_compile.py --topology=v5e:4x4 --variant=B/16 --batch=64
  python benchmarks/aot_compile.py --topology=v5e:4x4 --variant=L/16 --batch=64 \
      --mesh=1,-1,1 --remat=full --dtype=bfloat16
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jax.experimental import topologies  # noqa: E402

from benchmarks import memory  # noqa: E402
from cover_jax.parallel import sharding  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topology", default="v5e:2x2", help="TPU type:chips, e.g. v5e:4x4, v4:2x2x2")
  parser.add_argument("--variant", default="B/16")
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--num_frames", type=int, default=8)
  parser.add_argument("--batch", type=int, default=0, help="global batch (0: 2 per chip)")
  parser.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor")
  parser.add_argument("--remat", default="none", choices=["none", "full", "dots"])
  parser.add_argument("--scan_layers", action="store_true")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--grad_accum_steps", type=int, default=1)
  args = parser.parse_args(argv)
  topology = topologies.get_topology_desc(args.topology, "tpu")
  devices = topology.devices
  mesh = sharding.make_mesh(tuple(int(s) for s in args.mesh.split(",")), devices)
  batch = args.batch or 2 * len(devices)
  knob = memory.Knob("aot", remat=args.remat, scan_layers=args.scan_layers, dtype=args.dtype,
                     grad_accum_steps=args.grad_accum_steps)
  fields = dict(variant=args.variant, image_size=args.image_size, num_frames=args.num_frames)
  compiled, _, _ = memory.compile_step(fields, knob, batch, mesh)
  mem = memory.memory_mb(compiled)
  print(f"{args.variant} {args.num_frames}x{args.image_size}, global batch {batch}, "
        f"mesh {dict(mesh.shape)} on {len(devices)} x {devices[0].device_kind} "
        f"({args.topology}); remat={args.remat} scan={args.scan_layers} dtype={args.dtype} "
        f"accum={args.grad_accum_steps}")
  print(f"per chip: state {mem['state']:.0f} MB, temp {mem['temp']:.0f} MB, "
        f"peak {mem['peak']:.0f} MB")


if __name__ == "__main__":
  main()
