"""One entry point for every pretrained format: read, convert, fit, and load into a train state.

  weights = read_pretrained(path, "auto")                  # any format -> our layout
  arrays, report, weights = load_pretrained(path, "auto", config.model, target_shapes)
  state = init_state_from_pretrained(config, state, params_shardings)   # the trainer's hook

Formats (`files.FORMATS`): ``vit_npz`` / ``big_vision_npz`` (`vit_npz.py`),
``timesformer_pyth`` (`timesformer_torch.py`; also its state dict as .npz),
``hf`` (`huggingface.py`), ``orbax`` (`orbax_init.py`); ``auto`` tells them
apart by name and contents (`files.detect_format`).

Number of heads. The shapes of ViT and of our own checkpoints give it; the
PyTorch layouts (official, HuggingFace) fuse heads, so it comes, in order,
from an explicit ``num_heads`` (convert's ``--num_heads``), what the
checkpoint says (HF ``config.json``, the ``.pyth``'s ``cfg``), the standard
variant of that width, or the configured model. In training, a checkpoint
whose head count differs from ``config.model``'s is an error naming the fix
(``--config.model.num_heads=N``); a checkpoint that says nothing and whose
width is standard but whose heads are not can be converted with
``python -m cover_jax.convert --num_heads=N`` and used from there.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cover_jax.models import block_stack, cover, timesformer
from cover_jax.pretrained import files, fit, huggingface, orbax_init, timesformer_torch, vit_npz
from cover_jax.pretrained.weights import PretrainedWeights, checkpoint_dims


def standard_heads(width: int | None) -> int | None:
  """Heads of the standard variant of this width (ViT-Ti 3, S 6, B 12, L/H 16)."""
  for w, _, heads, _ in timesformer.VARIANT_DIMS.values():
    if w == width:
      return heads
  return None


def read_pretrained(path: str, fmt: str = "auto", *, num_heads: int | None = None,
                    default_heads: int | None = None) -> PretrainedWeights:
  """A checkpoint of any supported format, converted to our layout.

  Args:
    path: file or directory.
    fmt: 'auto' or one of `files.FORMATS`.
    num_heads: explicit head count (overrides what the checkpoint says).
    default_heads: used when neither the checkpoint nor the width standard says.
  """
  fmt = files.detect_format(path) if fmt == "auto" else fmt
  if fmt not in files.FORMATS:
    raise files.CheckpointFileError(f"format {fmt!r}: use auto or one of {', '.join(files.FORMATS)}")
  if fmt in ("vit_npz", "big_vision_npz"):
    return vit_npz.convert(files.read_npz(path), path, fmt)
  if fmt == "orbax":
    return orbax_init.read(path)
  if fmt == "timesformer_pyth":
    state, info, dropped = timesformer_torch.read(path)
    heads = _resolve_heads(path, info, timesformer_torch.width_of(state), num_heads, default_heads)
    return timesformer_torch.convert(state, heads, path=path, fmt=fmt, info=info, dropped=dropped)
  hf_state, info = huggingface.read(path)
  official, _, _ = huggingface.to_official(hf_state)
  heads = _resolve_heads(path, info, timesformer_torch.width_of(official), num_heads, default_heads)
  return huggingface.convert(hf_state, info, heads, path=path)


def _resolve_heads(path, info, width, explicit, default) -> int:
  if explicit:
    if info.num_heads and info.num_heads != explicit:
      logging.warning("%s: using num_heads=%d as asked, although %s says %d", path, explicit,
                      info.heads_from, info.num_heads)
    info.num_heads, info.heads_from = explicit, "the explicit num_heads setting"
  elif not info.num_heads:
    standard = standard_heads(width)
    info.num_heads, info.heads_from = ((standard, f"the standard variant of width {width}") if standard
                                       else (default, "the configured model"))
  if not info.num_heads:
    raise files.CheckpointFileError(
        f"{path}: cannot tell the number of attention heads: the checkpoint does not say and "
        f"width {width} is no standard variant. Pass it: --num_heads=N (convert) or "
        "--config.model.num_heads=N (training).")
  if width and width % info.num_heads:
    raise files.CheckpointFileError(
        f"{path}: num_heads={info.num_heads} (from {info.heads_from}) does not divide the "
        f"width {width}; pass the right count (--num_heads / --config.model.num_heads).")
  return info.num_heads


def param_shapes(params) -> dict[str, tuple[int, ...]]:
  """Flat {our path: shape} of an nnx.State of parameters (arrays or ShapeDtypeStructs)."""
  return {flat_key(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def flat_key(path) -> str:
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def model_param_shapes(model_config, num_classes: dict[str, int]) -> dict[str, tuple[int, ...]]:
  model = nnx.eval_shape(lambda: cover.build_model(model_config, num_classes, nnx.Rngs(0)))
  return param_shapes(nnx.state(model, nnx.Param))


def params_state(arrays: dict[str, np.ndarray], model_config, num_classes: dict[str, int]):
  """The model's nnx.State of parameters (host arrays), every leaf from `arrays` (flat paths)."""
  model = nnx.eval_shape(lambda: cover.build_model(model_config, num_classes, nnx.Rngs(0)))
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: jnp.asarray(arrays[flat_key(path)], leaf.dtype),
      nnx.state(model, nnx.Param))


def load_pretrained(path: str, fmt: str, model_config, target_shapes: dict[str, tuple[int, ...]], *,
                    heads: str = "matching", head_map: str | dict = "",
                    posemb_resize: str = "auto"):
  """(arrays to load by flat path, fit.FitReport, the PretrainedWeights) for this model."""
  dims = cover.model_dims(model_config)
  weights = read_pretrained(path, fmt, default_heads=dims.num_heads)
  _check_heads(weights, dims)
  _check_attention_type(weights, model_config)
  mapping = fit.parse_head_map(head_map) if isinstance(head_map, str) else dict(head_map)
  arrays, report = fit.fit(weights, target_shapes, heads=heads, head_map=mapping,
                           posemb_resize=posemb_resize, model_dims=dims)
  return arrays, report, weights


def _check_heads(weights: PretrainedWeights, dims) -> None:
  """Heads are invisible in fused PyTorch shapes: check them before anything else.

  Only at equal width: otherwise `fit` reports every mismatch and the variant.
  """
  ckpt = checkpoint_dims(weights.params)
  same_width = ckpt is not None and ckpt.width == dims.width
  if same_width and weights.info.num_heads and weights.info.num_heads != dims.num_heads:
    raise fit.PretrainedMismatchError(
        f"cannot initialise the model from {weights.path}: it has {weights.info.num_heads} "
        f"attention heads (from {weights.info.heads_from}), the configured model "
        f"{dims.num_heads}. Fix: --config.model.num_heads={weights.info.num_heads}")


def _check_attention_type(weights: PretrainedWeights, model_config) -> None:
  theirs = weights.info.attention_type
  if theirs and not weights.is_image_model and theirs != model_config.attention_type:
    weights.notes.append(f"the checkpoint uses attention_type={theirs!r}, the model "
                         f"{model_config.attention_type!r} (--config.model.attention_type={theirs})")


def init_state_from_pretrained(config, state, params_shardings):
  """`state` (freshly initialised, sharded) with `config.init_from`'s weights loaded.

  Every process reads the checkpoint and supplies its own shards of each
  array (`jax.make_array_from_callback`), so nothing is gathered on one
  device. Parameters the checkpoint does not provide (new heads) keep their
  fresh initialisation. The optimizer state stays as initialised: AdamW's and
  SGD's slots start at zero whatever the parameter values.
  """
  # Converters and fitting speak per-block keys; a scanned model gets them stacked.
  shapes = block_stack.unstack_flat(param_shapes(state.params))
  arrays, report, weights = load_pretrained(
      config.init_from, config.init.format, config.model, shapes, heads=config.init.heads,
      head_map=config.init.head_map, posemb_resize=config.init.posemb_resize)
  if config.model.get("scan_layers", False):
    arrays = block_stack.stack_flat(arrays)
  logging.info("init_from %s (%s): %s", weights.path, weights.format, report.summary())
  for key, why in sorted(weights.dropped.items()):
    logging.info("init_from: not loaded: %s (%s)", key, why)
  return state.replace(params=replace_params(state.params, arrays, params_shardings))


def replace_params(params, arrays: dict[str, np.ndarray], shardings):
  """`params` with the leaves named in `arrays` replaced, placed in `shardings`."""
  def put(path, leaf, sharding):
    key = flat_key(path)
    if key not in arrays:
      return leaf
    value = np.asarray(arrays[key], dtype=leaf.dtype)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree_util.tree_map_with_path(put, params, shardings)
