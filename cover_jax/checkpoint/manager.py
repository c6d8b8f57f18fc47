"""Orbax checkpoints of the train state: the on-disk layout, saving, and fall-back to older steps.

The layout (the one place it is written down; every reader goes through here):

  <workdir>/checkpoints/<step>/state/   Orbax pytree: {step, params, opt_state}
                                        (a `convert` output: {step, params})
  <workdir>/checkpoints/<step>/meta/    Orbax JSON: the config (as JSON text), the
                                        class names per head, input positions, ...

A parameters-only checkpoint (a `convert` output, an `export --format=orbax`
release) is a directory with one step 0 and the config beside it:

  <dir>/checkpoints/0/{state,meta}      state: {step, params}
  <dir>/config.json                     the config (the meta's, indented)

Each checkpoint holds these two items: `state` (arrays, restored bit-exactly
onto the current mesh's shardings) and `meta` (the config and the run's
bookkeeping). A damaged latest checkpoint
still shows up in `all_steps()` and only fails when restored, so restoring
tries steps newest-first, each with a *fresh* CheckpointManager (a manager that
failed once can fail on a good step too: with Orbax 0.12, one that failed to
restore a damaged step also failed on the good step before it). Nothing is deleted:
a training run moves damaged steps aside (to `damaged-<step>-<time>`, which
Orbax ignores), so that it can save that step again when it gets there.
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

STATE, META = "state", "meta"  # the two items of a step
CHECKPOINTS = "checkpoints"    # the sub-directory of a workdir


class NoCheckpointError(FileNotFoundError):
  """A path holds no checkpoint step (that restores); the message says which path."""


def step_dirs(path: str) -> list[str]:
  """A workdir's, its checkpoints/ directory's, or one step's step directories, newest first."""
  root = epath.Path(path)
  if (root / STATE).is_dir():
    return [str(path)]
  if (root / CHECKPOINTS).is_dir():
    root = root / CHECKPOINTS
  if not root.is_dir():
    raise NoCheckpointError(f"{path}: no such directory")
  steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir()),
                 reverse=True)
  if not steps:
    raise NoCheckpointError(f"{root}: no checkpoint steps (numbered directories) found")
  return [str(root / str(s)) for s in steps]


def read_meta(step_dir: str) -> dict:
  """The `meta` item of one step as a dict ({} where it has none)."""
  meta_file = epath.Path(step_dir) / META / "metadata"
  if not meta_file.is_file():
    return {}
  return json.loads(meta_file.read_text())


def saved_config(meta: dict) -> dict | None:
  """The config a step was saved with, as a dict (None where the meta has none)."""
  config = meta.get("config")
  return json.loads(config) if isinstance(config, str) else config


def read_state(step_dir: str) -> dict:
  """The whole saved `state` of one step as nested dicts of NumPy arrays (host only)."""
  restored = ocp.StandardCheckpointer().restore(epath.Path(step_dir) / STATE)
  return jax.tree.map(np.asarray, restored)


def restore_params(step_dir: str) -> dict:
  """The `params` of one step as nested dicts of NumPy arrays (partial restore, host only).

  Raises:
    ValueError: the step's state holds no parameters (not a checkpoint of ours).
  """
  checkpointer = ocp.PyTreeCheckpointer()
  state_dir = epath.Path(step_dir) / STATE
  tree = checkpointer.metadata(state_dir).item_metadata
  tree = getattr(tree, "tree", tree)
  if not isinstance(tree, dict) or "params" not in tree:
    raise ValueError(f"{state_dir}: holds no 'params' (not a checkpoint of ours)")
  item = {"params": _map_leaves(tree["params"], lambda m: np.empty(m.shape, m.dtype))}
  restore_args = _map_leaves(item, lambda _: ocp.RestoreArgs(restore_type=np.ndarray))
  restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=restore_args, partial_restore=True))
  return restored["params"]


def write_params_only(directory: str, params, config_json: str, meta: dict) -> str:
  """Writes a parameters-only checkpoint (see the module docstring); returns its step dir."""
  checkpoints = epath.Path(directory) / CHECKPOINTS
  ckpt = Checkpointer(str(checkpoints), max_to_keep=1, asynchronous=False)
  ckpt.save(0, {"step": np.zeros((), np.int32), "params": params}, meta)
  ckpt.close()
  (epath.Path(directory) / "config.json").write_text(config_json + "\n")
  return str(checkpoints / "0")


def _map_leaves(tree, fn):
  """`fn` on the leaves of nested dicts (Orbax metadata trees are dicts of leaf metadata)."""
  if isinstance(tree, dict):
    return {k: _map_leaves(v, fn) for k, v in tree.items()}
  return fn(tree)


class Checkpointer:
  """Periodic asynchronous saves, keep-N, and restore-latest-that-works."""

  def __init__(self, directory: str, *, max_to_keep: int, asynchronous: bool = True):
    # epath keeps a remote directory remote (os.path.abspath would turn
    # gs://bucket/run into <cwd>/gs:/bucket/run).
    self.directory = str(directory) if "://" in str(directory) else os.path.abspath(directory)
    self._options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=asynchronous, create=True)
    self._manager = self._new_manager()

  def _new_manager(self) -> ocp.CheckpointManager:
    # Handlers named up front, so a step's metadata can be read before restoring it.
    return ocp.CheckpointManager(
        epath.Path(self.directory), options=self._options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       META: ocp.JsonCheckpointHandler()})

  def save(self, step: int, state, meta: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def wait(self) -> None:
    """Blocks until the last (asynchronous) save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def restore_latest(self, abstract_state, *, set_aside_damaged: bool = False, check=None
                     ) -> tuple[int, object, dict] | None:
    """(step, state, meta) of the newest checkpoint that restores, else None.

    Args:
      abstract_state: the state's pytree of jax.ShapeDtypeStruct with
        shardings; restored arrays are placed accordingly.
      set_aside_damaged: rename the steps that failed to restore (newer than
        the one returned) out of Orbax's view. Only for the process that
        writes checkpoints, and only when training will continue.
      check: optional `check(step, meta, saved_tree_metadata)`, called before a
        step's arrays are restored; what it raises propagates (a config that
        does not fit is not damage: nothing is set aside).
    """
    self._manager.wait_until_finished()
    damaged, found = [], None
    for step in sorted(self._manager.all_steps(), reverse=True):
      found = self._try_restore(step, abstract_state, check)
      if found is not None:
        break
      damaged.append(step)
    if damaged and set_aside_damaged:
      self._set_aside(damaged)
    return found

  def _try_restore(self, step: int, abstract_state, check) -> tuple[int, object, dict] | None:
    manager = self._new_manager()  # a fresh one per attempt (see the module docstring)
    try:
      try:
        meta = dict(manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"] or {})
        saved_tree = manager.item_metadata(step)["state"]
        if saved_tree is None:
          raise ValueError("no metadata for the saved state")
      except Exception as e:  # pylint: disable=broad-except
        return self._damaged(step, e)
      if check is not None:
        check(step, meta, saved_tree)
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # pylint: disable=broad-except
        return self._damaged(step, e)
      return step, restored["state"], meta
    finally:
      manager.close()

  def _damaged(self, step: int, error: Exception) -> None:
    # Any damage (truncated files, missing metadata, garbage manifest) surfaces
    # as some exception from deep inside Orbax/TensorStore.
    first_line = str(error).split("[tensorstore_spec", 1)[0].splitlines()[0][:300]
    logging.warning("checkpoint step %d in %s does not restore (%s: %s); trying an older one",
                    step, self.directory, type(error).__name__, first_line)
    logging.info("why checkpoint step %d does not restore, in full: %s", step, error)
    return None

  def _set_aside(self, steps) -> None:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for step in steps:
      target = epath.Path(self.directory) / f"damaged-{step}-{stamp}"
      (epath.Path(self.directory) / str(step)).rename(target)
      logging.warning("moved damaged checkpoint step %d to %s", step, target)
    self._manager.close()
    self._manager = self._new_manager()  # forget the renamed steps
