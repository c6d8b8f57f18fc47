"""Shared helpers for the pretrained-checkpoint tests: tiny configs, loading, forward passes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cover_jax.config.defaults import model_config
from cover_jax.models import cover
from cover_jax.pretrained import loader
from tests.helpers import REPO

FIXTURES = REPO / "tests" / "fixtures" / "pretrained"
PARITY_ATOL = 1e-4  # the bound for float32 logits

# The HuggingFace / official fixture: width 32, 2 layers, 4 heads, MLP 64, patch 8, 32 px, 4 frames.
TIMESFORMER_DIMS = dict(variant="Mu/8", width=32, depth=2, num_heads=4, mlp_dim=64)
# The ViT fixtures: width 16, 2 layers, 2 heads, MLP 32, patch 8, 24 px.
VIT_DIMS = dict(variant="Mu/8", width=16, depth=2, num_heads=2, mlp_dim=32)


def tiny_model_config(dims: dict, **overrides):
  return model_config(**{**dims, **overrides})


def load_model(path, mc, num_classes: dict[str, int], fmt: str = "auto", **kw):
  """(model with the checkpoint loaded, fit report, converted weights)."""
  shapes = loader.model_param_shapes(mc, num_classes)
  arrays, report, weights = loader.load_pretrained(str(path), fmt, mc, shapes, **kw)
  model = cover.build_model(mc, num_classes, nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  state = loader.replace_params(state, arrays, jax.tree.map(lambda x: x.sharding, state))
  nnx.update(model, state)
  return model, report, weights


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, state, x, dataset):
  model = nnx.merge(graphdef, state)
  features_bd = model.backbone(x)
  return features_bd, (model.heads[dataset](features_bd) if dataset else None)


def features(model, x) -> np.ndarray:
  graphdef, state = nnx.split(model)
  return np.asarray(_forward(graphdef, state, jnp.asarray(x, jnp.float32), None)[0])


def logits(model, x, dataset: str) -> np.ndarray:
  graphdef, state = nnx.split(model)
  return np.asarray(_forward(graphdef, state, jnp.asarray(x, jnp.float32), dataset)[1])


def params_of(model) -> dict:
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def released_normalisation(clip_u8: np.ndarray) -> np.ndarray:
  """[0, 1] frames normalised with mean = std = 0.5 (released TimeSformer / ViT)."""
  return ((clip_u8.astype(np.float32) / 255.0 - 0.5) / 0.5).astype(np.float32)
