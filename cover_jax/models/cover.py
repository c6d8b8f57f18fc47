"""CoVeR: one TimeSformer backbone, one classification head per dataset.

The only place that picks a dataset's head. With a dataset *name* the model
returns that head's logits; with a traced dataset *index* (a batch's
`dataset_index`) it runs `lax.switch` over the heads, so that datasets whose
batches share a shape share one compiled step. Heads differ in class count,
so each branch first reduces its logits with the caller's `reduce(name,
logits)` to values of one shape (a loss, hit counts).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from cover_jax.models import timesformer


class CoVeR(nnx.Module):
  """TimeSformer backbone + ``heads[dataset_name]`` linear classifiers.

  `head_init_std` = 0 zero-initialises the heads (big_vision/scenic fine-tuning
  convention: every dataset starts from uniform predictions). The official
  TimeSformer uses a truncated normal, std 0.02; training from scratch needs a
  non-zero head: with a zero head the backbone gets no gradient until the head
  has learned from the *initial* features, and at init (zero temporal_fc) those
  are blind to frame order, so a motion-only dataset never leaves chance.
  """

  def __init__(self, backbone: timesformer.TimeSformer, num_classes: Mapping[str, int], *,
               head_init_std: float = 0.0, rngs: nnx.Rngs):
    width = backbone.dims.width
    self.backbone = backbone
    kernel_init = (nnx.initializers.truncated_normal(stddev=head_init_std) if head_init_std > 0
                   else nnx.initializers.zeros_init())
    self.heads = nnx.Dict({
        name: nnx.Linear(
            width, classes, rngs=rngs,
            kernel_init=nnx.with_partitioning(kernel_init, ("embed", "classes"),
                                              eager_sharding=False),
            bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("classes",),
                                            eager_sharding=False))
        for name, classes in sorted(num_classes.items())})

  @property
  def dataset_names(self) -> tuple[str, ...]:
    return tuple(sorted(self.heads.keys()))

  def __call__(self, x_bthwc: jax.Array, dataset: str | jax.Array, *,
               reduce: Callable | None = None, deterministic: bool = True,
               rngs: nnx.Rngs | None = None):
    """Logits (B, classes of `dataset`) for a batch of clips of that dataset.

    Args:
      x_bthwc: float frames (B, T, H, W, 3), normalised.
      dataset: a head's name, or an int32 index into `dataset_names` (may be traced).
      reduce: `reduce(name, logits) -> values`; applied to the head's logits.
        Needed with an index: every branch must return values of one shape.
    """
    features_bd = self.backbone(x_bthwc, deterministic=deterministic, rngs=rngs)
    return self.apply_head(features_bd, dataset, reduce)

  def apply_head(self, features_bd: jax.Array, dataset: str | jax.Array,
                 reduce: Callable | None = None):
    """`dataset`'s head on backbone features (see `__call__`)."""
    if isinstance(dataset, str):
      logits = self.heads[dataset](features_bd).astype(jnp.float32)
      return logits if reduce is None else reduce(dataset, logits)
    if reduce is None:
      raise ValueError("a dataset index selects the head inside a compiled step; heads differ "
                       "in class count, so pass `reduce(name, logits)` to make their outputs "
                       "alike")
    branches = [functools.partial(self._reduced_logits, name, reduce)
                for name in self.dataset_names]
    return jax.lax.switch(dataset, branches, features_bd)

  def _reduced_logits(self, name: str, reduce: Callable, features_bd: jax.Array):
    return reduce(name, self.heads[name](features_bd).astype(jnp.float32))


def build_model(model_config, num_classes: Mapping[str, int], rngs: nnx.Rngs) -> CoVeR:
  """Builds CoVeR from `config.model` and {dataset name: class count}."""
  dims = model_dims(model_config)
  backbone = timesformer.TimeSformer(
      dims, image_size=model_config.image_size, num_frames=model_config.num_frames,
      attention_type=model_config.attention_type, dropout=model_config.dropout,
      attention_dropout=model_config.attention_dropout,
      stochastic_depth=model_config.stochastic_depth,
      time_embed_init_std=model_config.get("time_embed_init_std", 0.0),
      dtype=jnp.dtype(model_config.dtype), remat=model_config.get("remat", "none"),
      scan_layers=model_config.get("scan_layers", False),
      attention_impl=model_config.get("attention_impl", "auto"), rngs=rngs)
  return CoVeR(backbone, num_classes, head_init_std=model_config.get("head_init_std", 0.0),
               rngs=rngs)


def model_dims(model_config) -> timesformer.TimeSformerDims:
  """The variant's dimensions, with any explicit width/depth/... overrides."""
  dims = timesformer.decode_variant(model_config.variant)
  overrides = {field: model_config.get(field) for field in ("width", "depth", "num_heads", "mlp_dim")}
  return timesformer.TimeSformerDims(**{
      **dims.__dict__, **{k: v for k, v in overrides.items() if v}})
