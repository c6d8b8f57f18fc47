"""The workdir: what a run writes there, and whether it can take checkpoints.

  <workdir>/config.json     the run's config, written when it starts
  <workdir>/log.txt         every log line, ours and the libraries' (local workdirs)
  <workdir>/metrics.jsonl   every logged scalar (metrics/writers.py); tensorboard/ too
  <workdir>/checkpoints/    Orbax checkpoints (checkpoint/manager.py)
  <workdir>/results.txt     the final accuracy table
  <workdir>/results.json    the same results, machine-readable, with their step
  <workdir>/timing.json     when each phase of the run happened (metrics/timing.py)

Every path goes through `etils.epath`, so a `gs://` workdir is written where
it says (Orbax's own path type); nothing is ever turned into a local path.

Before training, the trainer checks that the workdir can take checkpoints.

A run that trains for hours and then cannot write its first checkpoint loses
all of it. So the trainer first writes (and fsyncs, and removes) a small probe
file in the workdir, which fails on a read-only, unwritable or completely full
filesystem, and then compares the free space with the size of one checkpoint
of this model (its state's bytes plus a margin): an Orbax save needs room for
one more checkpoint before it deletes the oldest.

Only local paths are checked; a remote workdir (`gs://...`) is left to Orbax.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
from etils import epath

from cover_jax.checkpoint import manager

EXIT_STATUS = 5
_PROBE_BYTES = 1 << 16  # more than a few bytes: a nearly full disk may still take those
_MARGIN = 1.1           # metadata, chunk padding
_MARGIN_BYTES = 1 << 20


class WorkdirError(OSError):
  """The workdir cannot hold checkpoints; the message says why and what to do."""


CONFIG, LOG, RESULTS_TXT, RESULTS_JSON, TIMING = (
    "config.json", "log.txt", "results.txt", "results.json", "timing.json")


def is_remote(path) -> bool:
  return "://" in str(path)


def path(workdir, name: str) -> epath.Path:
  """A file of the workdir (remote or local), as Orbax addresses it too."""
  return epath.Path(workdir) / name


def write_config(workdir, config) -> None:
  path(workdir, CONFIG).write_text(config.to_json(indent=2) + "\n")


def write_results(workdir, step: int, results: dict, train_top1: dict, table: str) -> None:
  """results.txt (the table) and results.json (the numbers, with their step)."""
  path(workdir, RESULTS_TXT).write_text(table + "\n")
  path(workdir, RESULTS_JSON).write_text(json.dumps(
      {"step": step, "results": results, "train_top1": train_top1, "table": table},
      indent=1) + "\n")


def finished_results(workdir, total_steps: int) -> dict | None:
  """The saved results of a run that has trained and evaluated all `total_steps`, else None.

  A run is finished when its results are of `total_steps` and so is its newest
  checkpoint (results are written after that checkpoint is saved; a run
  whose last checkpoint was lost is not finished).
  """
  saved = path(workdir, RESULTS_JSON)
  try:
    results = json.loads(saved.read_text()) if saved.exists() else None
    newest = int(epath.Path(manager.step_dirs(workdir)[0]).name)
  except (manager.NoCheckpointError, ValueError, OSError):
    return None
  if not results or results.get("step") != total_steps or newest != total_steps:
    return None
  return results


def ensure_writable(workdir: str) -> None:
  """Creates `workdir` if needed and proves a file can be written there."""
  if is_remote(workdir):
    _ensure_remote_writable(workdir)
    return
  probe = os.path.join(workdir, f".write-probe-{jax.process_index()}-{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "wb") as f:
      f.write(b"\0" * _PROBE_BYTES)
      f.flush()
      os.fsync(f.fileno())
  except OSError as e:
    raise WorkdirError(
        f"workdir {workdir!r} is not usable: writing a file there failed "
        f"({e.strerror or e}). Nothing was trained. Fix: make it writable or free space "
        "there, or pass another --workdir.") from e
  finally:
    if os.path.exists(probe):
      os.remove(probe)


def _ensure_remote_writable(workdir: str) -> None:
  """A gs:// workdir: Orbax's GCS support is installed, and an object can be written there."""
  if str(workdir).startswith("gs://"):
    try:
      from google.cloud import storage  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      raise WorkdirError(
          f"workdir {workdir!r}: Orbax writes gs:// checkpoints with the google-cloud-storage "
          "package, which is not installed. Nothing was trained. Fix: pip install -e "
          "\".[tpu]\" (or pip install google-cloud-storage).") from None
  probe = epath.Path(workdir) / f".write-probe-{jax.process_index()}-{os.getpid()}"
  try:
    probe.write_bytes(b"\0" * 16)
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-except  (each file system has its own errors)
    raise WorkdirError(
        f"workdir {workdir!r} is not usable: writing an object there failed "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}). Nothing was "
        "trained. Fix: check the bucket name and your credentials, or pass another "
        "--workdir.") from e


def checkpoint_bytes(abstract_state) -> int:
  """Bytes of the arrays of one checkpoint of this state (all shards)."""
  return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
             for leaf in jax.tree.leaves(abstract_state))


def ensure_room_for_checkpoint(directory: str, abstract_state) -> None:
  """Raises WorkdirError if `directory`'s filesystem cannot take one more checkpoint."""
  if is_remote(directory):
    return
  needed = int(checkpoint_bytes(abstract_state) * _MARGIN) + _MARGIN_BYTES
  existing = directory
  while not os.path.exists(existing):  # the checkpoint dir itself may not exist yet
    existing = os.path.dirname(existing)
  free = shutil.disk_usage(existing).free
  if free < needed:
    raise WorkdirError(
        f"workdir {directory!r} has {_mib(free)} free, but one checkpoint of this model "
        f"needs about {_mib(needed)}. Nothing was trained. Fix: free space there, or pass "
        "another --workdir.")


def _mib(num_bytes: int) -> str:
  return f"{num_bytes / 2**20:.1f} MiB"
