"""Can this config resume from that checkpoint? Decided before restoring it.

Each checkpoint's meta holds the config it was trained with. Before a
checkpoint's arrays are restored, the current config is compared with it:

- Fields that shape the saved state (model dimensions, datasets and their
  class counts, the optimizer) must be equal: otherwise resuming fails with a
  message naming each field and both values. The state's tree itself (names,
  shapes, dtypes from Orbax's metadata) is compared too, which catches any
  other structural change (e.g. gradient clipping switched on or off changes
  the optimizer state) and lists the differing entries.
- Bookkeeping fields (total steps, logging/eval/checkpoint frequency, how many
  checkpoints to keep, data_dir, mesh shape, init_from) may change freely.
- Every other change (learning rate, seed, batch size, ...) is allowed, e.g. to
  resume a diverged run with a lower learning rate, but logged as a warning:
  from there on it is not the same run.

These checks come first so that a config mismatch is never mistaken for a
damaged checkpoint (which would be set aside in favour of an older one).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import jax

from cover_jax.checkpoint import manager

# Fields whose value fixes a shape or the structure of the saved state.
STATE_FIELDS = ("model.variant", "model.width", "model.depth", "model.num_heads",
                "model.mlp_dim", "model.image_size", "model.num_frames",
                "model.attention_type", "optimizer.name")
# Fields that change only when and how progress is reported or saved.
BOOKKEEPING_FIELDS = ("total_steps", "log_every", "eval_every", "checkpoint_every",
                      "keep_checkpoints", "data_dir", "mesh_shape", "nonfinite.inject_at_step",
                      # used only when there is no checkpoint to resume from
                      "init_from", "init.format", "init.heads", "init.head_map",
                      "init.posemb_resize")
# How a dataset is evaluated does not change what is trained.
BOOKKEEPING_DATASET_FIELDS = ("eval_batch_size", "eval_clips", "eval_crops", "eval_short_side",
                              "eval_split")
_MAX_LISTED = 8


class ResumeConfigError(ValueError):
  """The config cannot resume from the workdir's checkpoint; the message says why."""


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
  """{'a': {'b': 1}} -> {'a.b': 1}; values as JSON gives them (tuples are lists)."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_as_flat_dict(config) -> dict[str, object]:
  return flatten(json.loads(config.to_json()))


def check_resumable(config, abstract_state, step: int, meta: Mapping, saved_tree) -> None:
  """Raises ResumeConfigError if `config` cannot continue the checkpoint of `step`.

  Args:
    config: the current config.
    abstract_state: the state this config builds (ShapeDtypeStructs).
    step: the checkpoint's step (for messages).
    meta: the checkpoint's meta; its 'config' is the saved config as JSON.
    saved_tree: Orbax's metadata tree of the saved state (shapes, dtypes).
  """
  problems = []
  saved_json = meta.get("config")
  if saved_json:
    saved = flatten(json.loads(saved_json))
    current = config_as_flat_dict(config)
    problems += _state_field_changes(saved, current)
    _log_allowed_changes(saved, current, step)
  problems += _tree_differences(saved_tree, abstract_state)
  if problems:
    listed = "\n  - ".join(problems)
    raise ResumeConfigError(
        f"cannot resume from the checkpoint of step {step}: it does not fit this config:\n"
        f"  - {listed}\nFix: run with the checkpoint's values, or start a new run in "
        "another --workdir.")


def _state_field_changes(saved: dict, current: dict) -> list[str]:
  out = []
  for field in STATE_FIELDS:
    if field in saved and saved[field] != current.get(field):
      out.append(f"config.{field} = {current.get(field)!r} here, {saved[field]!r} in the "
                 f"checkpoint (--config.{field}={saved[field]})")
  saved_sets, current_sets = _dataset_names(saved), _dataset_names(current)
  if saved_sets != current_sets:
    out.append(f"config.datasets = {sorted(current_sets)} here, {sorted(saved_sets)} in the "
               "checkpoint (one classification head per dataset)")
  for name in sorted(saved_sets & current_sets):
    field = f"datasets.{name}.num_classes"
    if saved.get(field) != current.get(field):
      out.append(f"config.{field} = {current.get(field)!r} here, {saved.get(field)!r} in the "
                 f"checkpoint (the head's size)")
  return out


def _dataset_names(flat: dict) -> set[str]:
  return {key.split(".")[1] for key in flat if key.startswith("datasets.")}


def _is_bookkeeping(field: str) -> bool:
  parts = field.split(".")
  return field in BOOKKEEPING_FIELDS or (
      parts[0] == "datasets" and len(parts) == 3 and parts[2] in BOOKKEEPING_DATASET_FIELDS)


def _log_allowed_changes(saved: dict, current: dict, step: int) -> None:
  changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
  run_changes = [k for k in changed if not _is_bookkeeping(k) and k not in STATE_FIELDS]
  bookkeeping = [k for k in changed if _is_bookkeeping(k)]
  describe = lambda keys: ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys)
  if bookkeeping:
    logging.info("resuming from step %d with changed bookkeeping: %s", step, describe(bookkeeping))
  if run_changes:
    logging.warning("resuming from step %d with a changed config: %s. From here on the run "
                    "differs from the one that wrote the checkpoint.", step,
                    describe(run_changes))


def _leaf_name(path) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return ".".join(parts)


def _tree_signature(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_leaf_name(path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}


def _tree_differences(saved_tree, abstract_state) -> list[str]:
  """Entries of the saved state missing here, new here, or of another shape/dtype."""
  saved, current = _tree_signature(saved_tree), _tree_signature(abstract_state)
  out = []
  only_saved = sorted(set(saved) - set(current))
  only_current = sorted(set(current) - set(saved))
  if only_saved:
    out.append(f"{len(only_saved)} saved entries this config does not build: "
               f"{_some(only_saved)}")
  if only_current:
    out.append(f"{len(only_current)} entries this config builds are not in the checkpoint: "
               f"{_some(only_current)}")
  differing = [f"{k} {saved[k]} saved, {current[k]} here"
               for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]
  if differing:
    out.append(f"{len(differing)} entries differ in shape/dtype: {_some(differing)}")
  return out


def _some(items: list[str]) -> str:
  more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
  return ", ".join(items[:_MAX_LISTED]) + more


class LayoutMismatchError(ValueError):
  """Checkpoints in the workdir have the other block layout (scanned or not)."""


def check_checkpoint_layout(directory: str, scan_layers: bool) -> None:
  """Refuses to resume from checkpoints saved with the other `model.scan_layers`.

  Such checkpoints would fail to restore and look damaged; this says why
  instead, before anything is restored or set aside.
  """
  try:
    steps = manager.step_dirs(directory)
  except manager.NoCheckpointError:
    return
  for step_dir in steps:
    try:
      saved = manager.saved_config(manager.read_meta(step_dir))["model"].get("scan_layers", False)
    except (OSError, ValueError, KeyError, TypeError):
      continue  # unreadable metadata: the restore's own fallback deals with it
    if bool(saved) != bool(scan_layers):
      raise LayoutMismatchError(
          f"{step_dir} was saved with "
          f"model.scan_layers={bool(saved)}, but this run has {bool(scan_layers)}. Resume with "
          f"--config.model.scan_layers={bool(saved)}, or convert the checkpoint into a new "
          "workdir first: python -m cover_jax.checkpoint.relayout --workdir=<this run> --output=<new dir>.")
