"""Device mesh and the one table that maps logical axis names to mesh axes.

Model code names the axes of every parameter and of activations at block
boundaries with *logical* names (``batch``, ``embed``, ``heads``, ...). Only
this module knows how those names land on the physical mesh, so changing the
parallelism strategy is a change of this table, never of model code.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or tuple of axes, or None for replicated).
# `batch` spans both data-parallel axes; parameters' `embed` dimension is
# sharded over `fsdp`; heads and MLP hidden units over `tensor`. With the
# default mesh (all devices on `data`) only the batch is split.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("time", None),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("qkv", None),
    ("patch", None),
    ("classes", None),
)


def make_mesh(mesh_shape: Sequence[int], devices=None) -> Mesh:
  """Builds a (data, fsdp, tensor) mesh; one entry may be -1 ("the rest").

  Axis types are Auto so that logical sharding constraints are hints to the
  SPMD partitioner rather than assertions (see PITFALLS: `jax.make_mesh`
  defaults to Explicit axes).
  """
  devices = np.asarray(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape, devices.size)
  return Mesh(devices.reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


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


def logical_to_mesh_spec(logical: PartitionSpec | Sequence[str | None] | None,
                         rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
  """Maps a spec of logical names to a spec of mesh axes via `rules`."""
  if logical is None:
    return PartitionSpec()
  table = dict(rules)
  mesh_axes = []
  for name in logical:
    if name is None:
      mesh_axes.append(None)
    elif name not in table:
      raise KeyError(f"logical axis {name!r} has no rule; known: {sorted(table)}")
    else:
      mesh_axes.append(table[name])
  return PartitionSpec(*mesh_axes)


def logical_to_shardings(logical_specs, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Maps a pytree of logical PartitionSpecs to NamedShardings on `mesh`."""
  is_spec = lambda x: isinstance(x, PartitionSpec)
  return jax.tree.map(
      lambda s: NamedSharding(mesh, _drop_size_one_axes(logical_to_mesh_spec(s, rules), mesh)),
      logical_specs, is_leaf=is_spec)


def _drop_size_one_axes(spec: PartitionSpec, mesh) -> PartitionSpec:
  """Removes mesh axes of size 1 or absent from `mesh` (they shard nothing)."""
  return PartitionSpec(*[_filter_axes(entry, mesh) for entry in spec])


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding hint for an activation, by logical names.

  A no-op when no mesh is set (eager tests, single-device runs), so model code
  never needs to know whether it runs sharded.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = _drop_size_one_axes(logical_to_mesh_spec(logical_axes), mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def _filter_axes(entry, mesh):
  if entry is None:
    return None
  axes = (entry,) if isinstance(entry, str) else tuple(entry)
  axes = tuple(a for a in axes if a in mesh.axis_names and mesh.shape[a] > 1)
  return None if not axes else axes[0] if len(axes) == 1 else axes


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding of an input array whose leading axis is the batch."""
  spec = logical_to_mesh_spec(("batch",) + (None,) * (ndim - 1))
  return NamedSharding(mesh, _drop_size_one_axes(spec, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
