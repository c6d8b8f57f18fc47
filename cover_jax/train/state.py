"""Creating the train state sharded from the start.

The model is first built abstractly (`nnx.eval_shape`: shapes only), its
logical axis annotations give every parameter's and optimizer slot's sharding,
and the real state is then initialised under `jax.jit(out_shardings=...)`, so
no device ever holds the whole state unless the mesh says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from cover_jax.parallel import sharding
from cover_jax.models import cover


@flax.struct.dataclass
class TrainState:
  """What a training step changes: the step counter, the parameters, the optimizer state."""
  step: jax.Array
  params: Any      # nnx.State of the model's parameters
  opt_state: Any


def _init_state(rng, model_config, num_classes, tx) -> tuple[nnx.GraphDef, TrainState]:
  model = cover.build_model(model_config, num_classes, nnx.Rngs(params=rng))
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=tx.init(params))


def abstract_train_state(model_config, num_classes: Mapping[str, int],
                         tx: optax.GradientTransformation, mesh: Mesh,
                         rules: sharding.Rules | None = None):
  """(graphdef, abstract state with shardings, state shardings); `rules`: sharding.py's."""
  graphdef, shapes = nnx.eval_shape(
      lambda: _init_state(jax.random.key(0), model_config, num_classes, tx))
  logical_specs = nnx.get_partition_spec(shapes)
  shardings = sharding.logical_to_shardings(logical_specs, mesh, rules)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          shapes, shardings)
  return graphdef, abstract, shardings


def init_train_state(rng, model_config, num_classes: Mapping[str, int],
                     tx: optax.GradientTransformation, state_shardings) -> TrainState:
  """The initial state, created directly in its shardings."""
  init = jax.jit(lambda r: _init_state(r, model_config, num_classes, tx)[1],
                 out_shardings=state_shardings)
  return init(rng)
