"""Runs a few train steps on several meshes of 8 fake CPU devices (a script).

Started by tests/test_sharding.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX is imported.
For one device and for each mesh it prints (as one JSON line) the losses,
gradient norms, final parameters' largest difference from the one-device run,
the compiled step's collective-op counts and the train state's bytes per device;
then the same with mixup/cutmix on one device and on 8 (data parallel).
"""

import json
import re
import sys

import jax
import numpy as np
from flax import nnx

from cover_jax.train import mixup as mixup_lib, optim, state as train_state
from cover_jax.parallel import sharding
from cover_jax.models import block_stack
from cover_jax.train.step import StepSettings, bind
from tests.helpers import load_config

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
CLASSES = {"appearance": 12, "images": 36, "motion": 8}
NAMES = tuple(sorted(CLASSES))
STEPS = 3  # step 0 has lr 0 (warm-up); later steps move the weights
# Every batch mixed (mixup or cutmix, half each), in every dataset's head.
MIXUP = mixup_lib.MixupSettings(mixup_alpha=(0.8,) * 3, cutmix_alpha=(1.0,) * 3,
                                mix_prob=(1.0,) * 3, switch_prob=(0.5,) * 3)


def tiny_config(**model):
  # 8 heads and widths divisible by 8, so every mesh below splits every parameter.
  config = load_config(arg="tiny=true")
  config.model.update(width=32, depth=1, num_heads=8, mlp_dim=64, **model)
  return config


def count_collectives(hlo_text: str) -> dict:
  """Collective ops in compiled HLO; '<op>@branch' counts those inside lax.switch branches."""
  counts = {}
  for op in COLLECTIVES:
    lines = [l for l in hlo_text.splitlines() if re.search(r"\b%s(-start)?\(" % op, l)]
    counts[op] = len(lines)
    counts[op + "@branch"] = sum("/cond/branch_" in l for l in lines)
  return counts


def run(mesh_shape, devices, host_batch, grad_accum_steps=1, mixup=None, **model):
  config = tiny_config(**model)
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  mesh = sharding.make_mesh(mesh_shape, devices)
  graphdef, _, shardings = train_state.abstract_train_state(config.model, CLASSES, tx, mesh)
  state = train_state.init_train_state(jax.random.key(0), config.model, CLASSES, tx, shardings)
  if model.get("scan_layers"):  # start from the unscanned run's parameters, stacked
    state = state.replace(params=jax.device_put(
        _stacked_initial_params(state.params, tx), shardings.params))
  settings = StepSettings(NAMES, (0.1,) * 3, micro_batches=grad_accum_steps, mixup=mixup)
  step = jax.jit(bind(graphdef, tx, settings, optim.learning_rate_schedule(config.optimizer, 6)),
                 out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
           for k, v in host_batch.items()}
  batch["dataset_index"] = jax.device_put(np.int32(NAMES.index("motion")),
                                          sharding.replicated(mesh))
  with jax.set_mesh(mesh):
    compiled = step.lower(state, (batch,), jax.random.key(1)).compile()
    losses, norms = [], []
    for _ in range(STEPS):
      state, metrics = compiled(state, (batch,), jax.random.key(1))
      losses.append(float(metrics["loss"]))
      norms.append(float(metrics["grad_norm"]))
  state_bytes = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
  params = nnx.to_pure_dict(jax.device_get(state.params))
  if model.get("scan_layers"):
    params = block_stack.unstack_blocks(params)
  return dict(losses=losses, norms=norms, collectives=count_collectives(compiled.as_text()),
              state_bytes_per_device=state_bytes,
              rows=sorted({s.data.shape[0] for s in batch["video"].addressable_shards})), params


def _stacked_initial_params(scanned_params, tx):
  unscanned = train_state.init_train_state(jax.random.key(0), tiny_config().model, CLASSES, tx,
                                           None).params
  params = jax.tree.map(lambda x: x, scanned_params)
  nnx.replace_by_pure_dict(params, block_stack.stack_blocks(nnx.to_pure_dict(unscanned)))
  return params


def main():
  assert jax.device_count() == 8, jax.devices()
  rng = np.random.default_rng(0)
  host_batch = {"video": rng.normal(size=(8, 4, 16, 16, 3)).astype(np.float32),
                "label": rng.integers(0, 8, 8).astype(np.int32)}
  reference, params1 = run((1, 1, 1), jax.devices()[:1], host_batch)
  init = nnx.to_pure_dict(jax.device_get(train_state.init_train_state(
      jax.random.key(0), tiny_config().model, CLASSES,
      optim.build_optimizer(tiny_config().optimizer, 6), None).params))
  reference["moved"] = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b))), params1, init)))
  results = {"1,1,1": reference}
  runs = [((8, 1, 1), {}), ((4, 2, 1), {}), ((2, 2, 2), {}), ((1, 8, 1), {}), ((1, 1, 8), {}),
          ((2, 2, 2), dict(remat="full", scan_layers=True, grad_accum_steps=2))]
  for shape, knobs in runs:
    out, params = run(shape, jax.devices(), host_batch, **knobs)
    out["max_diff"] = max(jax.tree.leaves(jax.tree.map(
        lambda a, b: float(np.max(np.abs(a - b))), params, params1)))
    results[",".join(map(str, shape)) + ("+knobs" if knobs else "")] = out
    print(f"done {shape} {knobs}", file=sys.stderr, flush=True)
  # Mixup + cutmix (mirror pairing across the global batch): one device vs data parallel.
  mixup_reference, mixup_params1 = run((1, 1, 1), jax.devices()[:1], host_batch, mixup=MIXUP)
  results["1,1,1+mixup"] = mixup_reference
  mixup_dp, params = run((8, 1, 1), jax.devices(), host_batch, mixup=MIXUP)
  mixup_dp["max_diff"] = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(a - b))), params, mixup_params1)))
  results["8,1,1+mixup"] = mixup_dp
  print(json.dumps(results))


if __name__ == "__main__":
  main()
