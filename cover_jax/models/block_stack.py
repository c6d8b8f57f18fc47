"""How the stack of transformer blocks runs: a loop or a scan, with remat.

Two memory knobs live here, both per block:

* **Remat** (`remat`): which activations of a block the backward pass keeps.
  'none' keeps everything (fastest, most memory); 'full' keeps only the
  block's inputs and recomputes the rest in the backward pass (about one more
  forward pass of compute, the least memory); 'dots' keeps the outputs of the
  weight matmuls (qkv, projections, MLP) and recomputes attention maps and
  element-wise ops (JAX's `dots_with_no_batch_dims_saveable`: attention
  einsums have batch dimensions, weight matmuls do not).
* **Scan over layers** (`scan_layers`): the blocks' parameters are stacked
  along a leading `layers` axis and one block is compiled and run `depth`
  times by `lax.scan` (compile time independent of depth). Stacked parameters
  have other names and shapes than the per-block ones (the checkpoint
  contract), so `stack_blocks` / `unstack_blocks` convert any tree that holds
  them (parameters, optimizer moments, whole train states) both ways.

A block step is `step(block, carry, layer_key, rate) -> carry` (`run_blocks`):
the carry is whatever the attention type threads through the blocks (cls and
patch tokens, or one token array).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cover_jax.parallel import sharding

# Inside a scan body, a block's parameters lose their leading `layers` axis:
# the same for their sharding annotations.
_LAYERS = {nnx.PARTITION_NAME: "layers"}

REMAT_POLICIES: dict[str, Any] = {  # keys: config/allowed.py REMAT
    "none": None,  # no rematerialisation
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def make_stacked(make_block: Callable[[nnx.Rngs], nnx.Module], depth: int,
                 rngs: nnx.Rngs) -> nnx.Module:
  """One module whose parameters have a leading axis of size `depth`.

  The new axis is named 'layers' in every parameter's sharding annotation.
  The blocks are initialised one after another from `rngs`, exactly as an
  unscanned stack's are, and then stacked: a model starts from the same
  weights whether or not it scans its layers (scan_layers changes no number).
  """
  @nnx.vmap(in_axes=None, out_axes=0, axis_size=depth, transform_metadata=_LAYERS)
  def layout():  # the stacked module's structure and annotations, shapes only
    return make_block(nnx.Rngs(0))
  graphdef, stacked = nnx.split(nnx.eval_shape(layout))
  layers = [nnx.to_pure_dict(nnx.state(make_block(rngs))) for _ in range(depth)]
  nnx.replace_by_pure_dict(stacked, jax.tree.map(lambda *xs: jnp.stack(xs), *layers))
  return nnx.merge(graphdef, stacked)


def run_blocks(step: Callable, blocks, carry, rngs: nnx.Rngs | None, *, remat: str,
               scanned: bool, drop_path_rates=None):
  """Applies `step` block after block (a Python loop, or `nnx.scan` if `scanned`).

  `step(block, carry, layer_key, rate) -> carry`. Randomness is per layer and
  the same in both forms: one key is drawn from `rngs`' dropout stream and
  split into one key per layer (`layer_key`; None when `rngs` is None, i.e.
  deterministic), so a scanned model draws exactly what the loop draws.
  `rate` is None in the loop (each block holds its own, static, drop-path
  rate); a scanned model's blocks are one module, so their rising stochastic
  depth rates travel as a scanned input (`drop_path_rates`, one per layer).
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat {remat!r} not in {sorted(REMAT_POLICIES)}")
  step = _with_gathered_params(step)
  if remat != "none":
    step = nnx.remat(step, policy=REMAT_POLICIES[remat], prevent_cse=not scanned)
  depth = _depth(blocks) if scanned else len(blocks)
  keys = None if rngs is None else jax.random.split(rngs.dropout(), depth)
  if not scanned:
    for i, block in enumerate(blocks):
      carry = step(block, carry, None if keys is None else keys[i], None)
    return carry
  rates = None if drop_path_rates is None else jnp.asarray(drop_path_rates, jnp.float32)

  @nnx.scan(in_axes=(0, nnx.Carry, 0), out_axes=(nnx.Carry, 0), transform_metadata=_LAYERS)
  def body(block, c, per_layer):
    key, rate = per_layer
    return step(block, c, key, rate), None
  return body(blocks, carry, (keys, rates))[0]


def _with_gathered_params(step):
  """`step` on a copy of the block whose parameters are gathered over `fsdp`."""
  def gathered(block, carry, layer_key, rate):
    graphdef, state = nnx.split(block)
    return step(nnx.merge(graphdef, sharding.gather_fsdp(state)), carry, layer_key, rate)
  return gathered


def _depth(blocks) -> int:
  return jax.tree.leaves(nnx.state(blocks, nnx.Param))[0].shape[0]


# --- Checkpoint conversion: per-block trees <-> stacked trees ---

def stack_blocks(tree: Any) -> Any:
  """Per-block form -> scanned form, wherever a tree has a `blocks` entry.

  `{..., 'blocks': {0: sub, 1: sub, ...}}` becomes `{..., 'blocks': stacked}`
  with every leaf of `sub` stacked along a new leading axis. Works on nested
  dicts as `nnx.to_pure_dict` gives them or as restored from a checkpoint
  (block keys as ints or digit strings), inside lists and tuples too (an
  optax state restored without a target is nested lists).
  """
  if isinstance(tree, (list, tuple)):
    return _map_sequence(stack_blocks, tree)
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    if key == "blocks" and isinstance(value, Mapping) and _is_block_list(value):
      layers = [value[k] for k in sorted(value, key=int)]
      out[key] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    else:
      out[key] = stack_blocks(value)
  return out


def unstack_blocks(tree: Any) -> Any:
  """Scanned form -> per-block form (the inverse of `stack_blocks`)."""
  if isinstance(tree, (list, tuple)):
    return _map_sequence(unstack_blocks, tree)
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    if key == "blocks" and isinstance(value, Mapping) and not _is_block_list(value):
      depth = jax.tree.leaves(value)[0].shape[0]
      out[key] = {i: jax.tree.map(lambda x, i=i: x[i], value) for i in range(depth)}
    else:
      out[key] = unstack_blocks(value)
  return out


def unstack_flat(arrays: Mapping[str, Any]) -> dict[str, Any]:
  """Flat '/'-joined keys: `.../blocks/<name>` (leading depth axis) -> `.../blocks/<i>/<name>`.

  Per-block keys pass through unchanged; works on arrays and on shapes (tuples).
  """
  out = {}
  for key, value in arrays.items():
    prefix, sep, rest = key.partition("/blocks/")
    if not sep or rest.split("/", 1)[0].isdigit():
      out[key] = value
      continue
    depth = value[0] if isinstance(value, tuple) else value.shape[0]
    for i in range(depth):
      out[f"{prefix}/blocks/{i}/{rest}"] = value[1:] if isinstance(value, tuple) else value[i]
  return out


def stack_flat(arrays: Mapping[str, Any]) -> dict[str, Any]:
  """The inverse of `unstack_flat` for arrays: per-block keys stacked on a leading axis."""
  out, layers = {}, {}
  for key, value in arrays.items():
    prefix, sep, rest = key.partition("/blocks/")
    index, _, name = rest.partition("/")
    if sep and index.isdigit():
      layers.setdefault(f"{prefix}/blocks/{name}", {})[int(index)] = value
    else:
      out[key] = value
  for key, by_index in layers.items():
    out[key] = np.stack([by_index[i] for i in sorted(by_index)])
  return out


def _map_sequence(fn, items):
  mapped = [fn(x) for x in items]
  return type(items)(*mapped) if hasattr(items, "_fields") else type(items)(mapped)  # namedtuple


def _is_block_list(blocks: Mapping) -> bool:
  return bool(blocks) and all(str(k).isdigit() for k in blocks)
