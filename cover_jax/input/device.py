"""Host batches on the devices: global arrays sharded over the batch axes, normalised there.

Pipelines hand over uint8 frames (4x smaller than float32 on the host and on
the way to the devices); the jitted train and eval steps normalise them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cover_jax.parallel import sharding


def normalise(video_uint8, mean, std):
  """uint8 pixels -> float32 (x / 255 - mean) / std, as the training pipeline normalises."""
  return ((video_uint8.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32))
          / jnp.asarray(std, jnp.float32))


def to_device(mesh, batch: dict, dataset_index: int, rules=None) -> dict:
  """Process-local host batch -> global arrays sharded over the batch axes."""
  out = {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, v.ndim, rules),
                                                   v)
         for k, v in batch.items()}
  out["dataset_index"] = jax.make_array_from_process_local_data(
      sharding.replicated(mesh), np.asarray(dataset_index, np.int32))
  return out


def abstract_batch(mesh, batch_size: int, num_frames: int, crop_size: int, rules=None) -> dict:
  """What `to_device` makes of a training batch, as shapes only (ahead-of-time compiles).

  The pipelines' batches are {'video': uint8 (B, T, H, W, 3), 'label': int32
  (B,)} (input/pipeline.py); the step reads the dataset index from its array.
  """
  shapes = {"video": ((batch_size, num_frames, crop_size, crop_size, 3), np.uint8),
            "label": ((batch_size,), np.int32)}
  out = {k: jax.ShapeDtypeStruct(shape, dtype,
                                 sharding=sharding.batch_sharding(mesh, len(shape), rules))
         for k, (shape, dtype) in shapes.items()}
  out["dataset_index"] = jax.ShapeDtypeStruct((), np.int32, sharding=sharding.replicated(mesh))
  return out
