r"""Converts a run's checkpoint between the scanned and unscanned block layouts.

`model.scan_layers` changes how the blocks' parameters are stored (one
`blocks/<i>/...` subtree per block, or one `blocks/...` subtree whose arrays
carry a leading depth axis), so a workdir's checkpoints only resume with the
layout they were saved with. This tool rewrites the newest checkpoint that
restores — parameters, optimizer state, step and meta (input positions
included) — in the other layout, into a new workdir, so the run continues
there as the same run:

  python -m cover_jax.checkpoint.relayout --workdir=/runs/k400 --output=/runs/k400_scanned
  python -m cover_jax.main --config=configs/k400.py --workdir=/runs/k400_scanned \
      --config.model.scan_layers=true

The arrays are read as NumPy on the host (no devices, no model), so a
checkpoint saved on a pod can be converted on any machine with enough memory.
"""

from __future__ import annotations

import json
import logging
import sys

import jax
import numpy as np
from absl import app, flags
from etils import epath

from cover_jax.checkpoint import manager
from cover_jax.models import block_stack

_WORKDIR = flags.DEFINE_string("workdir", None, "The run (or its checkpoints/ or one step) to read.")
_OUTPUT = flags.DEFINE_string("output", None, "New workdir to write (must hold no checkpoint).")
_SCAN = flags.DEFINE_enum("scan_layers", "auto", ["auto", "true", "false"],
                          "Layout to write; auto: the opposite of the checkpoint's.")


class RelayoutError(ValueError):
  """The input or output cannot be used; the message says why."""


def relayout(workdir: str, output: str, scan_layers: bool | None = None) -> tuple[int, bool]:
  """Writes the newest restorable checkpoint of `workdir` into `output` in the other layout.

  Returns:
    (step, scan_layers of the written checkpoint).
  """
  out_dir = epath.Path(output) / manager.CHECKPOINTS
  if out_dir.is_dir() and any(p.name.isdigit() for p in out_dir.iterdir()):
    raise RelayoutError(f"--output={output} already holds checkpoints: choose a new directory")
  for step_dir in manager.step_dirs(workdir):
    try:
      state = manager.read_state(step_dir)
    except Exception as e:  # pylint: disable=broad-except  (damage surfaces as many types)
      logging.warning("%s does not restore (%s: %s); trying an older step", step_dir,
                      type(e).__name__, e)
      continue
    meta = manager.read_meta(step_dir)
    config = manager.saved_config(meta)
    if config is None:
      raise RelayoutError(f"{step_dir}: its meta holds no config (not a training checkpoint)")
    saved = bool(config["model"].get("scan_layers", False))
    target = (not saved) if scan_layers is None else scan_layers
    convert = block_stack.stack_blocks if target else block_stack.unstack_blocks
    state = jax.tree.map(np.asarray, convert(state)) if target != saved else state
    config["model"]["scan_layers"] = target
    meta = {**meta, "config": json.dumps(config)}
    step = int(epath.Path(step_dir).name)
    writer = manager.Checkpointer(str(out_dir), max_to_keep=int(config.get("keep_checkpoints", 2)),
                                     asynchronous=False)
    writer.save(step, state, meta)
    writer.close()
    return step, target
  raise RelayoutError(f"{workdir}: no checkpoint step restores")


def main(argv):
  del argv
  scan = {"auto": None, "true": True, "false": False}[_SCAN.value]
  try:
    step, target = relayout(_WORKDIR.value, _OUTPUT.value, scan)
  except (RelayoutError, manager.NoCheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote step {step} with model.scan_layers={target} to {_OUTPUT.value}; continue with\n"
        f"  python -m cover_jax.main --config=<the run's config> --workdir={_OUTPUT.value} "
        f"--config.model.scan_layers={str(target).lower()}", flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "output"])
  app.run(main)
