"""Classifying videos with a checkpoint: loading it, preprocessing as its config says, top-k.

The library behind `python -m cover_jax.predict` (see that module for usage
and the preprocessing it applies).
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from flax import nnx

from cover_jax.prepare import video_decode
from cover_jax.evaluation import views as multiview
from cover_jax.models import cover
from cover_jax.pretrained import loader, orbax_init


class PredictError(ValueError):
  """Bad input or checkpoint for prediction; the message says what to do."""
def load(checkpoint_dir: str):
  """(model, config, {head: class names}) of the newest step of a checkpoint that restores."""
  weights = orbax_init.read(checkpoint_dir)
  if not weights.info.config:
    raise PredictError(f"{weights.path}: the checkpoint's meta has no config; it was not "
                       "written by cover_jax training or convert.")
  config = ml_collections.ConfigDict(weights.info.config)
  num_classes = {name: int(ds.num_classes) for name, ds in config.datasets.items()}
  model = cover.build_model(config.model, num_classes, nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  missing = sorted(set(loader.param_shapes(state)) - set(weights.params))
  if missing:
    raise PredictError(f"{weights.path} lacks parameters of its own config's model: {missing[:5]}")
  nnx.update(model, loader.replace_params(state, weights.params,
                                          jax.tree.map(lambda x: x.sharding, state)))
  names = {n: weights.info.class_names.get(n) or [f"class_{i}" for i in range(c)]
           for n, c in num_classes.items()}
  return model, config, names


def read_frames(path: str, ds_config) -> np.ndarray:
  """uint8 (F, H, W, 3) frames of a .npy or a video (decoded per the dataset's settings)."""
  if path.endswith(".npy"):
    try:
      frames = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
      raise PredictError(f"{path}: not a readable .npy of frames ({e})") from None
    frames = frames[None] if frames.ndim == 3 else frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
      raise PredictError(f"{path}: expected uint8 frames (T, H, W, 3) or an image (H, W, 3), "
                         f"found {frames.dtype} {frames.shape}")
    return frames
  try:
    return video_decode.decode_video(path, fps=ds_config.get("fps") or None,
                                     short_side=_short_side(ds_config)).frames_thwc
  except video_decode.VideoDecodeError as e:
    raise PredictError(str(e)) from None


def _short_side(ds_config) -> int:
  return int(ds_config.get("eval_short_side") or ds_config.crop_size)


def views(frames, ds_config, mean, std):
  """float32 (V, T, S, S, 3): the dataset's eval views of the frames, normalised."""
  frames = tf.convert_to_tensor(frames)
  height, width = int(frames.shape[1]), int(frames.shape[2])
  short = _short_side(ds_config)
  if min(height, width) != short:
    scale = short / min(height, width)
    size = (max(short, round(height * scale)), max(short, round(width * scale)))
    frames = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
        frames, size, method="bilinear", antialias=True)), 0, 255), tf.uint8)
  num_frames, size = int(ds_config.num_frames), int(ds_config.crop_size)
  if ds_config.get("sampling", "stride") == "segment":
    available = int(frames.shape[0])
    index = np.floor((np.arange(num_frames) + 0.5) * available / num_frames).astype(np.int32)
    clips = tf.gather(frames, index)[None]
    out = multiview.spatial_views(clips, size, int(ds_config.get("eval_crops", 1)))
  else:
    out = multiview.multi_view(frames, num_frames=num_frames, stride=int(ds_config.stride),
                               num_clips=int(ds_config.get("eval_clips", 1)),
                               num_crops=int(ds_config.get("eval_crops", 1)), size=size)
  out = out.numpy().astype(np.float32) / 255.0
  return ((out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def predict(checkpoint_dir: str, input_path: str, dataset: str | None = None) -> dict:
  """{head: (logits (C,), class names)} for the input, averaged over each head's views."""
  model, config, names = load(checkpoint_dir)
  heads = sorted(names) if dataset is None else [dataset]
  if dataset is not None and dataset not in names:
    raise PredictError(f"--dataset={dataset}: the checkpoint's heads are {sorted(names)}")
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x, name: nnx.merge(graphdef, s)(x, name), static_argnums=2)
  out, frames_by_source = {}, {}
  for head in heads:
    ds = config.datasets[head]
    key = (ds.get("fps"), _short_side(ds))  # decode each distinct setting once
    if key not in frames_by_source:
      frames_by_source[key] = read_frames(input_path, ds)
    x = views(frames_by_source[key], ds, config.input.mean, config.input.std)
    logits = np.asarray(forward(state, x, head)).mean(axis=0)
    out[head] = (logits, names[head])
  return out


def format_top_k(head: str, logits, names, k: int) -> str:
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  order = np.argsort(-probs)[:k]
  width = max(len(names[i]) for i in order)
  lines = [f"{head} ({len(names)} classes):"]
  lines += [f"  {rank}. {names[i]:<{width}}  {probs[i]:.4f}" for rank, i in enumerate(order, 1)]
  return "\n".join(lines)


def save_logits(path: str, results: dict) -> None:
  if path.endswith(".npz"):
    np.savez(path, **{head: logits for head, (logits, _) in results.items()})
  elif len(results) == 1:
    np.save(path, next(iter(results.values()))[0])
  else:
    raise PredictError(f"--output={path}: {len(results)} heads give several arrays; save them "
                       "to a .npz, or pick one head with --dataset")
