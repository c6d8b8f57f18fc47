"""Device mesh and the one table that maps logical axis names to mesh axes.

Model code names the axes of every parameter and of activations at block
boundaries with *logical* names (``batch``, ``embed``, ``heads``, ...). Only
this module knows how those names land on the physical mesh, so changing the
parallelism strategy is a change of this table (or of `config.axis_rules`,
which overrides it), never of model code.

Strategies, by mesh shape (`config.mesh_shape` = (data, fsdp, tensor)):
  data parallel  (N, 1, 1): batch split, parameters replicated, gradients
                 all-reduced.
  FSDP           (1, N, 1): batch split over `fsdp` too; parameters and
                 optimizer state split along their `embed` dimension, gathered
                 for use, gradients reduce-scattered.
  tensor         (1, 1, N): attention heads and MLP hidden units split
                 (Megatron-style: an all-reduce after each attention and MLP).
and any product of them, e.g. (2, 2, 2).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

MeshAxes = str | tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Logical name -> mesh axis (or tuple of axes, or None for replicated).
# `batch` spans both data-parallel axes; parameters' `embed` dimension is
# sharded over `fsdp`; heads and MLP hidden units over `tensor`. With the
# default mesh (all devices on `data`) only the batch is split.
LOGICAL_AXIS_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("time", None),
    ("length", None),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("qkv", None),
    ("classes", None),
    ("layers", None),  # the stacked-blocks axis of a scanned model (scan_layers)
)


def make_mesh(mesh_shape: Sequence[int], devices=None) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh; one entry may be -1 ("the rest").

  Device order comes from `jax.make_mesh`, which follows the physical
  topology on TPU (rings for the inner axes). Axis types are Auto so that
  logical sharding constraints are hints to the SPMD partitioner rather than
  assertions (`jax.make_mesh` defaults to Explicit axes since JAX 0.7, under
  which a logical constraint that disagrees with an input's sharding is an
  error instead of a resharding).
  """
  devices = list(jax.devices() if devices is None else np.asarray(devices).flat)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
  """Replaces a single -1 by the number of remaining devices."""
  shape = list(mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} "
                     f"entries, one per axis {MESH_AXES}.")
  known = int(np.prod([s for s in shape if s != -1]))
  if shape.count(-1) > 1 or known <= 0 or num_devices % known:
    raise ValueError(f"mesh shape {tuple(shape)} does not fit {num_devices} "
                     "devices: use positive sizes whose product divides the "
                     "device count, with at most one -1.")
  shape = [num_devices // known if s == -1 else s for s in shape]
  if int(np.prod(shape)) != num_devices:
    raise ValueError(f"mesh shape {tuple(shape)} uses {int(np.prod(shape))} "
                     f"devices but {num_devices} are available.")
  return tuple(shape)


# --- The rules table as config: {logical name: "data+fsdp" | "tensor" | ""} ---

def rules_to_config(rules: Rules = LOGICAL_AXIS_RULES) -> dict[str, str]:
  """The table in config form: mesh axes '+'-joined, '' for replicated."""
  return {name: "+".join(_as_tuple(axes)) for name, axes in rules}


def rules_from_config(axis_rules: Mapping[str, str]) -> Rules:
  """Parses `config.axis_rules` back into a rules table.

  Raises:
    ValueError: naming the entry whose value is not '+'-joined mesh axes.
  """
  rules = []
  for name, text in axis_rules.items():
    axes = tuple(a.strip() for a in str(text).split("+") if a.strip())
    unknown = [a for a in axes if a not in MESH_AXES]
    if unknown or len(set(axes)) != len(axes):
      raise ValueError(f"axis rule {name}={text!r}: use '+'-joined mesh axes from "
                       f"{MESH_AXES} without repeats, or '' for replicated")
    rules.append((name, None if not axes else axes[0] if len(axes) == 1 else axes))
  return tuple(rules)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
  return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


# --- Rules in effect while a step is traced ---

def current_rules() -> Rules:
  """The rules set by `with_rules` (Flax's logical-axis context), else the default."""
  return tuple(flax_spmd.get_logical_axis_rules()) or LOGICAL_AXIS_RULES


def with_rules(fn: Callable, rules: Rules) -> Callable:
  """`fn` running under `rules`, so that `constrain` inside it uses them.

  The rules travel with the function object (not a global set elsewhere), so
  `jax.jit` of the result traces with them every time.
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with nnx.logical_axis_rules(rules):
      return fn(*args, **kwargs)
  return wrapped


def logical_to_mesh_spec(logical: PartitionSpec | Sequence[str | None] | None,
                         rules: Rules | None = None) -> PartitionSpec:
  """Maps a spec of logical names to a spec of mesh axes via `rules`."""
  if logical is None:
    return PartitionSpec()
  table = dict(current_rules() if rules is None else rules)
  mesh_axes = []
  for name in logical:
    if name is None:
      mesh_axes.append(None)
    elif name not in table:
      raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    else:
      mesh_axes.append(table[name])
  return PartitionSpec(*mesh_axes)


def logical_to_shardings(logical_specs, mesh: Mesh, rules: Rules | None = None):
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  is_spec = lambda x: isinstance(x, PartitionSpec)
  return jax.tree.map(
      lambda s: NamedSharding(mesh, _drop_size_one_axes(logical_to_mesh_spec(s, rules), mesh)),
      logical_specs, is_leaf=is_spec)


def _drop_size_one_axes(spec: PartitionSpec, mesh) -> PartitionSpec:
  """Removes mesh axes of size 1 or absent from `mesh` (they shard nothing)."""
  return PartitionSpec(*[_filter_axes(entry, mesh) for entry in spec])


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding hint for an activation, by logical names (rules: `current_rules`).

  A no-op when no mesh is set (eager tests, single-device runs), so model code
  never needs to know whether it runs sharded.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = _drop_size_one_axes(logical_to_mesh_spec(logical_axes), mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def gather_fsdp(params):
  """FSDP's "use whole": parameters constrained to their sharding without `fsdp`.

  Parameters are stored split over `fsdp` (with their optimizer state) and
  gathered where they are used; applied per block, inside its remat scope, so
  only one block's gathered weights are alive at a time. In the backward pass
  this becomes the reduce-scatter of the gradients. `params` is a pytree of
  annotated nnx Variables (e.g. `nnx.state(block)`); a no-op without a mesh
  whose `fsdp` axis has more than one device.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or dict(mesh.shape).get("fsdp", 1) == 1:
    return params

  def gather(variable):
    names = variable.get_metadata().get("out_sharding")
    if not names:
      return variable
    spec = _drop_size_one_axes(logical_to_mesh_spec(names), mesh)
    spec = PartitionSpec(*[_without_axis(entry, "fsdp") for entry in spec])
    return variable.replace(jax.lax.with_sharding_constraint(variable[...], spec))
  return jax.tree.map(gather, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _without_axis(entry, axis: str):
  axes = tuple(a for a in _as_tuple(entry) if a != axis)
  return None if not axes else axes[0] if len(axes) == 1 else axes


def _filter_axes(entry, mesh):
  if entry is None:
    return None
  axes = (entry,) if isinstance(entry, str) else tuple(entry)
  axes = tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)
  return None if not axes else axes[0] if len(axes) == 1 else axes


def indivisible_dims(shapes, logical_specs, mesh_sizes: Mapping[str, int],
                     rules: Rules | None = None) -> list[str]:
  """Descriptions of array dimensions that the rules split unevenly.

  Args:
    shapes: a pytree of arrays or ShapeDtypeStructs.
    logical_specs: the matching pytree of logical PartitionSpecs.
    mesh_sizes: {mesh axis: size}.
  """
  problems = []
  flat_specs = jax.tree.leaves(logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
  flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
  table = dict(current_rules() if rules is None else rules)
  for (path, leaf), spec in zip(flat_shapes, flat_specs):
    for dim, name in zip(leaf.shape, spec):
      axes = _as_tuple(table.get(name)) if name else ()
      ways = int(np.prod([mesh_sizes.get(a, 1) for a in axes]))
      if dim % ways:
        where = jax.tree_util.keystr(path, simple=True, separator="/").removesuffix("/value")
        problems.append(f"{where} has {dim} "
                        f"along {name!r}, split over {'+'.join(axes)} ({ways} ways)")
  return problems


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules | None = None) -> NamedSharding:
  """Sharding of an input array whose leading axis is the batch."""
  spec = logical_to_mesh_spec(("batch",) + (None,) * (ndim - 1), rules)
  return NamedSharding(mesh, _drop_size_one_axes(spec, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
