"""Fitting converted weights to a configured model, or saying exactly why they don't fit.

`fit(weights, target_shapes, ...)` returns the arrays to load, keyed by our
flat parameter paths, after

1. inflating an image model (ViT): each block's ``temporal_attn`` and
   ``temporal_norm1`` copy its spatial ``attn`` and ``norm1``; ``temporal_fc``
   and the time embedding are zero (the official TimeSformer's init);
2. resizing the position embedding to the model's grid (nearest for
   TimeSformer checkpoints, bilinear for ViT; `resize.py`) and the time
   embedding to its frame count (nearest);
3. choosing heads: a dataset's head is loaded from the checkpoint head of
   the same name (or the one `head_map` names) when the class counts agree;
   every other dataset gets a new head.

Anything that does not fit raises `PretrainedMismatchError` listing the
missing keys, the unexpected keys, every shape mismatch with both shapes, the
head problems, and the variant the checkpoint would fit.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from cover_jax.config import allowed
from cover_jax.models import timesformer
from cover_jax.pretrained import resize
from cover_jax.pretrained.weights import (CheckpointDims, PretrainedError, PretrainedWeights,
                                         checkpoint_dims)

HEAD_MODES = allowed.INIT_HEAD_MODES
_MAX_LISTED = 12
_TEMPORAL_COPY_RE = re.compile(r"^backbone/blocks/(\d+)/(temporal_norm1|temporal_attn)/(.+)$")
_TEMPORAL_ZERO_RE = re.compile(r"^backbone/(blocks/\d+/temporal_fc/.+|time_embed)$")


class PretrainedMismatchError(PretrainedError):
  """Checkpoint weights that do not fit the configured model; the message lists why."""


@dataclasses.dataclass
class FitReport:
  """What loading did, for the log."""
  loaded_heads: dict[str, str] = dataclasses.field(default_factory=dict)  # dataset -> checkpoint head
  new_heads: dict[str, str] = dataclasses.field(default_factory=dict)     # dataset -> why new
  resized: list[str] = dataclasses.field(default_factory=list)
  inflated: list[str] = dataclasses.field(default_factory=list)
  num_loaded: int = 0

  def summary(self) -> str:
    parts = [f"{self.num_loaded} arrays loaded"]
    if self.inflated:
      parts.append(f"{len(self.inflated)} temporal parameters initialised from the image model "
                   "(attention/norm copied, temporal_fc and time embedding zero)")
    parts += self.resized
    parts += [f"head {d!r} <- checkpoint head {h!r}" for d, h in sorted(self.loaded_heads.items())]
    parts += [f"head {d!r} new ({why})" for d, why in sorted(self.new_heads.items())]
    return "; ".join(parts)


def parse_head_map(text: str) -> dict[str, str]:
  """'k400=head,ssv2=ssv2_old' -> {dataset: checkpoint head}."""
  out = {}
  for item in filter(None, (p.strip() for p in (text or "").split(","))):
    ours, sep, theirs = item.partition("=")
    if not sep or not ours.strip() or not theirs.strip():
      raise ValueError(f"head_map entry {item!r}: use DATASET=CHECKPOINT_HEAD, e.g. 'k400=head'")
    out[ours.strip()] = theirs.strip()
  return out


def fit(weights: PretrainedWeights, target_shapes: dict[str, tuple[int, ...]], *,
        heads: str = "matching", head_map: dict[str, str] | None = None,
        posemb_resize: str = "auto", model_dims: timesformer.TimeSformerDims | None = None,
        ) -> tuple[dict[str, np.ndarray], FitReport]:
  """The arrays to load into a model with parameters `target_shapes` (flat paths).

  Args:
    weights: converted checkpoint weights.
    target_shapes: our flat parameter path -> shape, for the whole model.
    heads: 'matching' (load heads whose name, or `head_map` entry, and class
      count match; new heads otherwise), 'none' (all new) or 'all' (every
      dataset must get a checkpoint head).
    head_map: {dataset: checkpoint head name}.
    posemb_resize: 'auto' (the source's own rule), 'nearest' or 'bilinear'.
    model_dims: the configured model's dimensions, for the error message.
  """
  if heads not in HEAD_MODES:
    raise ValueError(f"heads={heads!r}: use one of {HEAD_MODES}")
  report = FitReport()
  params = {k: v for k, v in weights.params.items() if k.startswith("backbone/")}
  sources = dict(weights.sources)
  if weights.is_image_model:
    report.inflated = _inflate(params, sources, target_shapes)
  method = weights.posemb_resize if posemb_resize == "auto" else posemb_resize
  report.resized = _resize_embeddings(params, target_shapes, method)
  problems = _backbone_problems(weights, params, sources, target_shapes)
  plan, head_problems = _plan_heads(weights, target_shapes, heads, head_map or {}, report)
  if any(problems.values()) or head_problems:
    raise PretrainedMismatchError(format_mismatch(weights, problems, head_problems, model_dims))
  for dataset, theirs in plan.items():
    for param in ("kernel", "bias"):
      params[f"heads/{dataset}/{param}"] = weights.params[f"heads/{theirs}/{param}"]
  report.num_loaded = len(params)
  return params, report


def _inflate(params, sources, target_shapes) -> list[str]:
  """Temporal parameters of an image model: copies of the spatial ones, or zeros."""
  added = []
  for key, shape in sorted(target_shapes.items()):
    if key in params:
      continue
    copy = _TEMPORAL_COPY_RE.match(key)
    if copy:
      spatial = "norm1" if copy[2] == "temporal_norm1" else "attn"
      source = f"backbone/blocks/{copy[1]}/{spatial}/{copy[3]}"
      if source in params:
        params[key] = params[source].copy()
        sources[key] = f"copy of {sources.get(source, source)}"
        added.append(key)
    elif _TEMPORAL_ZERO_RE.match(key):
      params[key] = np.zeros(shape, np.float32)
      sources[key] = "zeros (new temporal parameter)"
      added.append(key)
  return added


def _resize_embeddings(params, target_shapes, method: str) -> list[str]:
  done = []
  pos, want = params.get("backbone/pos_embed"), target_shapes.get("backbone/pos_embed")
  if pos is not None and want is not None and pos.shape != tuple(want) and pos.shape[1:] == tuple(want[1:]):
    try:
      params["backbone/pos_embed"] = resize.resize_pos_embed(pos, want[0], method)
      done.append(f"position embedding resized {_grid(pos.shape[0])} -> {_grid(want[0])} ({method})")
    except ValueError:
      pass  # not a square grid: reported as a shape mismatch
  time, want = params.get("backbone/time_embed"), target_shapes.get("backbone/time_embed")
  if time is not None and want is not None and time.shape != tuple(want) and time.shape[1:] == tuple(want[1:]):
    params["backbone/time_embed"] = resize.resize_time_embed(time, want[0])
    done.append(f"time embedding resized {time.shape[0]} -> {want[0]} frames (nearest)")
  return done


def _grid(length: int) -> str:
  side = int(round((length - 1) ** 0.5))
  return f"{side}x{side}" if side * side == length - 1 else f"{length - 1} patches"


def model_order(key: str):
  """Sort key following the model: embeddings, blocks by number, final norm, heads."""
  parts = key.split("/")
  group = 3 if parts[0] == "heads" else 1 if "blocks" in parts else 2 if "norm" == parts[1] else 0
  return group, [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]


def _backbone_problems(weights, params, sources, target_shapes) -> dict[str, list[str]]:
  wanted = {k: tuple(s) for k, s in target_shapes.items() if k.startswith("backbone/")}
  missing = sorted(set(wanted) - set(params), key=model_order)
  unexpected = list(weights.unexpected) + [
      sources.get(k, k) for k in sorted(params, key=model_order) if k not in wanted]
  mismatched = [
      f"{k}{_from(sources, k)}: checkpoint {tuple(params[k].shape)}, model {wanted[k]}"
      for k in sorted(set(wanted) & set(params), key=model_order) if tuple(params[k].shape) != wanted[k]]
  return {"missing in the checkpoint": missing, "unexpected in the checkpoint": unexpected,
          "shape mismatches": mismatched}


def _from(sources, key) -> str:
  source = sources.get(key)
  return f" (from {source})" if source and source != key else ""


def _plan_heads(weights, target_shapes, mode, head_map, report) -> tuple[dict[str, str], list[str]]:
  """{dataset: checkpoint head to load} and the problems with what was asked."""
  datasets = {k.split("/")[1]: s[-1] for k, s in target_shapes.items()
              if k.startswith("heads/") and k.endswith("/bias")}
  available = {h: weights.num_classes(h) for h in weights.head_names()}
  problems = [f"head_map names dataset {d!r}, which the model does not have "
              f"(datasets: {', '.join(sorted(datasets))})" for d in head_map if d not in datasets]
  plan = {}
  for dataset, classes in sorted(datasets.items()):
    theirs = head_map.get(dataset, dataset)
    asked = dataset in head_map or mode == "all"
    if mode == "none":
      report.new_heads[dataset] = "init heads='none'"
      continue
    if theirs not in available:
      why = (f"the checkpoint has no head {theirs!r} (its heads: "
             f"{', '.join(f'{h} ({c} classes)' for h, c in sorted(available.items())) or 'none'})")
    elif available[theirs] != classes:
      why = f"checkpoint head {theirs!r} has {available[theirs]} classes, the dataset {classes}"
    else:
      plan[dataset] = report.loaded_heads[dataset] = theirs
      continue
    if asked:
      problems.append(f"dataset {dataset!r}: {why}")
    else:
      report.new_heads[dataset] = why
  return plan, problems


def format_mismatch(weights: PretrainedWeights, problems: dict[str, list[str]],
                    head_problems: list[str], model_dims=None) -> str:
  lines = [f"cannot initialise the model from {weights.path} (format {weights.format}):"]
  ours = None
  if model_dims is not None:
    ours = CheckpointDims(model_dims.width, model_dims.depth, model_dims.mlp_dim,
                          model_dims.patch_size, model_dims.num_heads)
    lines.append(f"  model: {ours.describe()}")
  dims = checkpoint_dims(weights.params)
  if dims:
    lines.append(f"  checkpoint: {dims.describe()}")
  if dims and dims != ours:
    lines.append(f"  fix: the checkpoint has {dims.describe()}: {suggest_variant(dims)}")
  for title, items in problems.items():
    if items:
      lines.append(f"  {title} ({len(items)}):")
      lines += [f"    {item}" for item in items[:_MAX_LISTED]]
      if len(items) > _MAX_LISTED:
        lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
  if head_problems:
    lines.append("  heads:")
    lines += [f"    {p}" for p in head_problems]
  lines += [f"  note: {n}" for n in weights.notes]
  return "\n".join(lines)


def suggest_variant(dims: CheckpointDims) -> str:
  """'use variant=B/16 (--config.model.variant=B/16)', with overrides where no variant fits."""
  same_width = [n for n, (w, _, _, _) in timesformer.VARIANT_DIMS.items() if w == dims.width]
  for name in same_width:
    _, depth, heads, mlp = timesformer.VARIANT_DIMS[name]
    if depth == dims.depth and dims.mlp_dim in (None, mlp) and dims.num_heads in (None, heads):
      variant = f"{name}/{dims.patch_size}"
      return f"use variant={variant} (--config.model.variant={variant})"
  name = same_width[0] if same_width else "B"
  _, depth, heads, mlp = timesformer.VARIANT_DIMS[name]
  flags = [f"--config.model.variant={name}/{dims.patch_size}"]
  if not same_width:
    flags.append(f"--config.model.width={dims.width}")
  if dims.depth != depth:
    flags.append(f"--config.model.depth={dims.depth}")
  if dims.mlp_dim and dims.mlp_dim != mlp:
    flags.append(f"--config.model.mlp_dim={dims.mlp_dim}")
  if dims.num_heads and (dims.num_heads != heads or not same_width):
    flags.append(f"--config.model.num_heads={dims.num_heads}")
  elif not dims.num_heads and not same_width:
    flags.append("--config.model.num_heads=<the checkpoint's number of heads>")
  return "use " + " ".join(flags)
