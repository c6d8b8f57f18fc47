"""Our own Orbax checkpoints as a starting point (``init_from`` a previous run or a `convert` output).

Accepted paths: a run's workdir (``.../checkpoints/<step>`` inside), its
``checkpoints`` directory, or one ``<step>`` directory. The newest step that
restores is used (an older one if the newest is damaged). Only the
parameters are read (Orbax partial restore, as NumPy arrays); optimizer state
and step stay behind, so fine-tuning starts a fresh schedule.

Heads keep their dataset names: a fine-tuning run's dataset of the same name
and class count gets that head, the others new heads (`fit.py`). The step's
JSON meta gives the config it was trained with (heads, frames, input
normalisation) and, for checkpoints written by this version on, the class
names of each head.
"""

from __future__ import annotations

import logging

import numpy as np

from cover_jax.checkpoint import manager
from cover_jax.models import block_stack
from cover_jax.pretrained import files
from cover_jax.pretrained.weights import CheckpointInfo, PretrainedWeights, flatten


def _flat_params(params: dict) -> dict[str, np.ndarray]:
  """Nested params -> flat {our path: array}; NNX variables are stored as {'value': array}."""
  flat = flatten(params)
  return {k[:-len("/value")] if k.endswith("/value") else k: np.asarray(v) for k, v in flat.items()}


def read(path: str) -> PretrainedWeights:
  """Weights of the newest step that restores, with what its meta says."""
  errors = []
  try:
    candidates = manager.step_dirs(path)
  except manager.NoCheckpointError as e:
    raise files.CheckpointFileError(str(e)) from None
  for step_dir in candidates:
    try:
      # A scanned run's blocks come per block, like every other format's.
      params = block_stack.unstack_flat(_flat_params(manager.restore_params(step_dir)))
    except Exception as e:  # pylint: disable=broad-except  (damage surfaces as many types)
      logging.warning("init_from: %s does not restore (%s: %s); trying an older step",
                      step_dir, type(e).__name__, e)
      errors.append(f"{step_dir}: {type(e).__name__}")
      continue
    info = info_from_meta(manager.read_meta(step_dir))
    qkv = params.get("backbone/blocks/0/attn/qkv_kernel")
    if qkv is not None:
      info.num_heads, info.heads_from = int(qkv.shape[2]), "the attention kernel shapes"
    return PretrainedWeights(path=step_dir, format="orbax", params=params,
                             sources={k: k for k in params}, info=info)
  raise files.CheckpointFileError(f"{path}: no checkpoint step restores ({'; '.join(errors)})")


def info_from_meta(meta: dict) -> CheckpointInfo:
  info = CheckpointInfo()
  config = manager.saved_config(meta)
  if isinstance(config, dict):
    info.config = config
    model = config.get("model", {})
    info.image_size, info.num_frames = model.get("image_size"), model.get("num_frames")
    info.attention_type = model.get("attention_type")
    info.mean = tuple(config.get("input", {}).get("mean", info.mean))
    info.std = tuple(config.get("input", {}).get("std", info.std))
  info.class_names = {k: list(v) for k, v in (meta.get("class_names") or {}).items()}
  return info
