"""Multi-process start-up: `jax.distributed` from flags, environment or cluster.

One process runs per host (TPU VM worker, or GPU node), or per GPU under
SLURM; all of them run the same program, each reading its share of the input
(`cover_jax/input/shards.py`), and JAX's multi-controller runtime joins their
devices into one mesh. This module only decides whether and how to call
`jax.distributed.initialize`, which must happen before JAX touches a device.

Resolution, first match wins:
  1. explicit: `--coordinator_address` / `--num_processes` / `--process_id`,
     else the environment `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
     `JAX_PROCESS_ID`;
  2. a managed cluster, where JAX finds everything itself: SLURM with more
     than one task, or a Cloud TPU VM with more than one worker;
  3. otherwise one process (nothing to initialise).
`--distributed=on` always initialises (JAX detects the cluster), `off` never.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

import jax

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How (and whether) to call `jax.distributed.initialize`."""
  initialize: bool
  why: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def plan(mode: str = "auto", coordinator_address: str | None = None,
         num_processes: int | None = None, process_id: int | None = None,
         environ: Mapping[str, str] | None = None) -> Plan:
  """Decides from arguments and `environ` (default `os.environ`); touches nothing."""
  if mode not in MODES:
    raise ValueError(f"--distributed={mode!r}: use one of {', '.join(MODES)}")
  env = os.environ if environ is None else environ
  address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS") or None
  count = num_processes if num_processes is not None else _int_env(env, "JAX_NUM_PROCESSES")
  index = process_id if process_id is not None else _int_env(env, "JAX_PROCESS_ID")
  if mode == "off":
    return Plan(False, "--distributed=off")
  if address or count is not None or index is not None:
    if None in (address, count, index):
      raise ValueError(
          "multi-process run: give all three of --coordinator_address (JAX_COORDINATOR_ADDRESS), "
          "--num_processes (JAX_NUM_PROCESSES) and --process_id (JAX_PROCESS_ID); got "
          f"address={address!r}, num_processes={count}, process_id={index}")
    return Plan(True, "explicit coordinator", address, count, index)
  if mode == "on":
    return Plan(True, "--distributed=on: JAX detects the cluster")
  if _int_env(env, "SLURM_NTASKS", 1) > 1 and "SLURM_JOB_ID" in env:
    return Plan(True, f"SLURM job {env['SLURM_JOB_ID']} with {env['SLURM_NTASKS']} tasks")
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return Plan(True, "Cloud TPU VM with several workers")
  return Plan(False, "single process")


def initialize(mode: str = "auto", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> Plan:
  """Calls `jax.distributed.initialize` per `plan(...)`; returns the plan used."""
  chosen = plan(mode, coordinator_address, num_processes, process_id)
  if chosen.initialize:
    logging.info("initialising jax.distributed: %s", chosen.why)
    jax.distributed.initialize(coordinator_address=chosen.coordinator_address,
                               num_processes=chosen.num_processes,
                               process_id=chosen.process_id)
    logging.info("process %d of %d; %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
  return chosen


def _int_env(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
  value = env.get(name)
  if value in (None, ""):
    return default
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} must be an integer") from None
