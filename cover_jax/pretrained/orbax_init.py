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

import json
import logging
import os

import numpy as np
import orbax.checkpoint as ocp

from cover_jax.models import block_stack
from cover_jax.pretrained import files
from cover_jax.pretrained.weights import CheckpointInfo, PretrainedWeights, flatten


def step_dirs(path: str) -> list[str]:
  """Candidate step directories, newest first."""
  if files.isdir(os.path.join(path, "state")):
    return [path]
  if files.isdir(os.path.join(path, "checkpoints")):
    path = os.path.join(path, "checkpoints")
  steps = sorted((int(n) for n in files.listdir(path)
                  if n.isdigit() and files.isdir(os.path.join(path, n))), reverse=True)
  if not steps:
    raise files.CheckpointFileError(f"{path}: no checkpoint steps (numbered directories) found")
  return [os.path.join(path, str(s)) for s in steps]


def read_meta(step_dir: str) -> dict:
  meta_file = os.path.join(step_dir, "meta", "metadata")
  if not files.isfile(meta_file):
    return {}
  with files.open_file(meta_file, "r") as f:
    return json.load(f)


def restore_params(step_dir: str) -> dict[str, np.ndarray]:
  """Flat {our path: array} of the `params` of one step (partial restore)."""
  checkpointer = ocp.PyTreeCheckpointer()
  state_dir = os.path.join(step_dir, "state")
  tree = checkpointer.metadata(state_dir).item_metadata
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "params" not in tree:
    raise files.CheckpointFileError(f"{state_dir}: holds no 'params' (not a checkpoint of ours)")
  item = {"params": _to_restore_item(tree["params"])}
  restore_args = _map_leaves(item, lambda _: ocp.RestoreArgs(restore_type=np.ndarray))
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  flat = flatten(restored["params"])
  # NNX variables are stored as {'value': array}: drop that last level.
  return {k[:-len("/value")] if k.endswith("/value") else k: np.asarray(v) for k, v in flat.items()}


def _to_restore_item(meta_tree):
  return _map_leaves(meta_tree, lambda m: np.empty(m.shape, m.dtype))


def _map_leaves(tree, fn):
  if isinstance(tree, dict):
    return {k: _map_leaves(v, fn) for k, v in tree.items()}
  return fn(tree)


def read(path: str) -> PretrainedWeights:
  """Weights of the newest step that restores, with what its meta says."""
  errors = []
  for step_dir in step_dirs(path):
    try:
      # A scanned run's blocks come per block, like every other format's.
      params = block_stack.unstack_flat(restore_params(step_dir))
    except Exception as e:  # pylint: disable=broad-except  (damage surfaces as many types)
      logging.warning("init_from: %s does not restore (%s: %s); trying an older step",
                      step_dir, type(e).__name__, e)
      errors.append(f"{step_dir}: {type(e).__name__}")
      continue
    info = info_from_meta(read_meta(step_dir))
    qkv = params.get("backbone/blocks/0/attn/qkv_kernel")
    if qkv is not None:
      info.num_heads, info.heads_from = int(qkv.shape[2]), "the attention kernel shapes"
    return PretrainedWeights(path=step_dir, format="orbax", params=params,
                             sources={k: k for k in params}, info=info)
  raise files.CheckpointFileError(f"{path}: no checkpoint step restores ({'; '.join(errors)})")


def info_from_meta(meta: dict) -> CheckpointInfo:
  info = CheckpointInfo()
  config = meta.get("config")
  if isinstance(config, str):
    config = json.loads(config)
  if isinstance(config, dict):
    info.config = config
    model = config.get("model", {})
    info.image_size, info.num_frames = model.get("image_size"), model.get("num_frames")
    info.attention_type = model.get("attention_type")
    info.mean = tuple(config.get("input", {}).get("mean", info.mean))
    info.std = tuple(config.get("input", {}).get("std", info.std))
  info.class_names = {k: list(v) for k, v in (meta.get("class_names") or {}).items()}
  return info
