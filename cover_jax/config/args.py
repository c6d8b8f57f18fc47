"""Typed `key=value,...` arguments for `get_config(arg)` (big_vision style).

`configs/demo.py:datasets=motion,steps=300` reaches `get_config` as the string
"datasets=motion,steps=300"; `parse_arg` turns it into a ConfigDict whose
values take the types of the defaults, and rejects unknown keys.
"""

from __future__ import annotations

import difflib

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "k1=v1,k2=v2" over `defaults`, converting to each default's type."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, raw = item.partition("=")
    key = key.strip()
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults), n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; allowed: "
                       f"{sorted(defaults)}.{hint}")
    if not sep and not isinstance(defaults[key], bool):
      raise ValueError(f"config argument {key!r} needs a value: {key}=VALUE")
    values[key] = _convert(key, raw.strip(), defaults[key]) if sep else True
  return ml_collections.ConfigDict(values)


def _convert(key: str, raw: str, default):
  if isinstance(default, bool):
    if raw.lower() in ("1", "true", "yes"):
      return True
    if raw.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"config argument {key}={raw!r}: expected true or false")
  try:
    return type(default)(raw)
  except ValueError:
    raise ValueError(f"config argument {key}={raw!r}: expected a "
                     f"{type(default).__name__}") from None
