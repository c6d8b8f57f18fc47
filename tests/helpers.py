"""Shared test helpers: load config files, build the tiny embedded datasets."""

from __future__ import annotations

import importlib.util
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


def fake_devices_env(count: int, **extra) -> dict:
  """os.environ for a subprocess with `count` fake CPU devices, the suite's compile flags kept.

  XLA reads the device count from XLA_FLAGS when JAX starts, so it must be
  set for a new process; the flags conftest.py sets stay (cheap compiles).
  """
  flags = f"--xla_force_host_platform_device_count={count} " + os.environ.get("XLA_FLAGS", "")
  return {**os.environ, "XLA_FLAGS": flags, **extra}


def load_config(path: str = "configs/demo.py", arg: str | None = None, **overrides):
  """get_config(arg) of a config file, unlocked with `overrides` applied."""
  spec = importlib.util.spec_from_file_location("config_under_test", REPO / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  with config.unlocked():
    for dotted, value in overrides.items():
      *parents, leaf = dotted.split(".")
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
  return config


def checkpoint_arrays(workdir, step: int) -> dict:
  """{path: numpy array} of the `state` item of checkpoint `step` in `workdir`."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  tree = ocp.StandardCheckpointer().restore(pathlib.Path(workdir) / "checkpoints" / str(step)
                                            / "state")
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_same_arrays(got: dict, want: dict, context: str = "") -> None:
  """Bit-for-bit equality of two `checkpoint_arrays` results."""
  import numpy as np

  assert sorted(got) == sorted(want), context
  differing = [k for k in want if not np.array_equal(got[k], want[k])]
  assert not differing, f"{context}: {len(differing)} arrays differ, e.g. {differing[:3]}"
