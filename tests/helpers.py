"""Shared test helpers: load config files, build the tiny embedded datasets."""

from __future__ import annotations

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent


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
