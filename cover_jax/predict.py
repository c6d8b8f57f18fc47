r"""Classifies a video (or an array of frames) with a checkpoint: top-k classes per head.

  python -m cover_jax.predict --checkpoint=/ckpt/tsf_k400 --input=clip.mp4
  python -m cover_jax.predict --checkpoint=/tmp/cover_demo --input=frames.npy --dataset=motion \
      --top_k=3 --output=logits.npy

--checkpoint: a training workdir, its checkpoints/ directory, one step
directory, or a `python -m cover_jax.convert` output; the newest step that
restores is used. --input: a video file FFmpeg reads (mp4, webm, avi, ...;
decoded with PyAV) or a .npy array of uint8 RGB frames (T, H, W, 3) (or one
(H, W, 3) image).

A video is seen as evaluation sees a test video of the head's dataset. It is
decoded as that dataset's videos were prepared (the frame rate, short side
and JPEG quality saved with the checkpoint: prepare_report.json of the
training data, or `convert`'s settings), and its K x S views are made by the
same function as evaluation's (evaluation/views.py: frame sampling, eval
resize, crops), then normalised with the checkpoint's `input.mean/std`; the
logits are averaged over the views. So a prepared test video gets the
video-level logits that `--mode=eval` computes for it. An array is taken as
the frames it holds: one of exactly the model's `num_frames` frames is one
clip as given; any input shorter than a clip's span gets a warning (its
frames repeat). Class names come from the checkpoint (saved by training runs
and by `convert`), else `class_<i>`. --output saves the logits: a .npy for
one head, a .npz (one array per head) for several.
"""

from __future__ import annotations

if __name__ == "__main__":  # the command: TensorFlow started quietly, before the imports below
  from cover_jax.train import exits as _exits
  _exits.hold_garbage_collection()  # until the imports are done (train/exits.py)
  from cover_jax.metrics import run_log as _run_log
  _run_log.import_tensorflow_quietly()

import dataclasses
import json
import sys

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags
from flax import nnx

from cover_jax.checkpoint import manager
from cover_jax.evaluation import step as eval_step, views
from cover_jax.models import block_stack, cover
from cover_jax.prepare import annotations, video_decode, video_records
from cover_jax.pretrained import files, loader, orbax_init
from cover_jax.metrics import run_log


class PredictError(ValueError):
  """Bad input or checkpoint for prediction; the message says what to do."""


@dataclasses.dataclass
class Prediction:
  """One head's answer: video-level logits, class names, and what to know about the input."""
  logits: np.ndarray          # (C,) averaged over the views
  class_names: list[str]
  warnings: list[str]


@dataclasses.dataclass
class Checkpoint:
  """A model from a checkpoint, with what predict needs of its meta."""
  graphdef: object
  params: object
  config: ml_collections.ConfigDict
  class_names: dict[str, list[str]]
  prepared: dict[str, dict | None]  # head -> how its dataset's videos were prepared


def load(checkpoint_dir: str) -> Checkpoint:
  """The newest step of a checkpoint that restores, as a model and its meta."""
  weights = orbax_init.read(checkpoint_dir)
  if not weights.info.config:
    raise PredictError(f"{weights.path}: the checkpoint's meta has no config; it was not "
                       "written by cover_jax training or convert.")
  config = ml_collections.ConfigDict(weights.info.config)
  num_classes = {name: int(ds.num_classes) for name, ds in config.datasets.items()}
  model = cover.build_model(config.model, num_classes, nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  # Checkpoints are read per block; a scanned model holds its blocks stacked.
  arrays = (block_stack.stack_flat(weights.params) if config.model.get("scan_layers", False)
            else weights.params)
  missing = sorted(set(loader.param_shapes(state)) - set(arrays))
  if missing:
    raise PredictError(f"{weights.path} lacks parameters of its own config's model: {missing[:5]}")
  nnx.update(model, loader.replace_params(state, arrays,
                                          jax.tree.map(lambda x: x.sharding, state)))
  names = {n: weights.info.class_names.get(n) or [f"class_{i}" for i in range(c)]
           for n, c in num_classes.items()}
  prepared = manager.read_meta(weights.path).get("prepared") or {}
  graphdef, params = nnx.split(model, nnx.Param)
  return Checkpoint(graphdef, params, config, names, {n: prepared.get(n) for n in names})


def read_input(path: str, prepared: dict | None) -> tuple[np.ndarray, bool, list[str]]:
  """(frames, encoded, warnings) of a .npy or a video file.

  A video is decoded as the dataset's videos were prepared (`prepared`: fps,
  short_side, jpeg_quality), JPEG-encoded as stored if they were; frames of
  a .npy are used as they are.
  """
  if path.endswith(".npy"):
    return _read_npy(path), False, []
  warnings = []
  if prepared is None:
    prepared = {}
    warnings.append("how this dataset's videos were prepared is not recorded in the checkpoint: "
                    "the video is decoded at its own frame rate and size")
  try:
    if prepared.get("jpeg_quality"):
      settings = video_records.EncodeSettings(fps=prepared.get("fps") or None,
                                              short_side=prepared.get("short_side") or None,
                                              jpeg_quality=int(prepared["jpeg_quality"]))
      clip = annotations.VideoClip(path=path, label="", name=path)
      encoded = video_records.encode_video(clip, settings).jpeg_frames
      return np.asarray(encoded, dtype=object), True, warnings
    video = video_decode.decode_video(path, fps=prepared.get("fps") or None,
                                      short_side=prepared.get("short_side") or None)
    return video.frames_thwc, False, warnings
  except video_decode.VideoDecodeError as e:
    raise PredictError(str(e)) from None


def _read_npy(path: str) -> np.ndarray:
  try:
    frames = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise PredictError(f"{path}: not a readable .npy of frames ({e})") from None
  frames = frames[None] if frames.ndim == 3 else frames
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise PredictError(f"{path}: expected uint8 frames (T, H, W, 3) or an image (H, W, 3), "
                       f"found {frames.dtype} {frames.shape}")
  return frames


def input_views(frames: np.ndarray, encoded: bool, ds_config,
                jpeg_only: bool = True) -> tuple[np.ndarray, list[str]]:
  """uint8 (V, T, crop, crop, 3) views of the input, and warnings about its length.

  An array of exactly `num_frames` frames is one clip, taken as given (its
  spatial crops as in evaluation); anything else is sampled as evaluation
  samples a test video (views.video_views).
  """
  available, num_frames = int(frames.shape[0]), int(ds_config.num_frames)
  segment = ds_config.get("sampling", "stride") == "segment"
  indices = None
  if not encoded and available == num_frames:
    indices = np.arange(num_frames, dtype=np.int32)[None]
  warnings = []
  span = num_frames if segment else (num_frames - 1) * int(ds_config.stride) + 1
  if indices is None and available < span:
    how = (f"{num_frames} segments" if segment else
           f"{num_frames} frames {ds_config.stride} apart span {span}")
    warnings.append(f"the input has {available} frame(s), fewer than one clip needs ({how}): "
                    "frames repeat (looped), as evaluation does for short videos")
  out = views.video_views(tf.constant(frames), ds_config, encoded=encoded, jpeg_only=jpeg_only,
                          indices_kt=indices)
  return out.numpy(), warnings


def predict(checkpoint_dir: str, input_path: str, dataset: str | None = None
            ) -> dict[str, Prediction]:
  """{head: Prediction} for the input, logits averaged over each head's views."""
  ckpt = load(checkpoint_dir)
  heads = sorted(ckpt.class_names) if dataset is None else [dataset]
  if dataset is not None and dataset not in ckpt.class_names:
    raise PredictError(f"--dataset={dataset}: the checkpoint's heads are "
                       f"{sorted(ckpt.class_names)}")
  mean, std = tuple(ckpt.config.input.mean), tuple(ckpt.config.input.std)
  forward = jax.jit(lambda params, batch, name: eval_step.view_logits(
      params, batch, graphdef=ckpt.graphdef, dataset=name, mean=mean, std=std),
                    static_argnums=2)
  out, inputs = {}, {}
  for head in heads:
    prepared = ckpt.prepared[head]
    key = json.dumps(prepared, sort_keys=True)  # decode each distinct preparation once
    if key not in inputs:
      inputs[key] = read_input(input_path, prepared)
    frames, encoded, warnings = inputs[key]
    x, view_warnings = input_views(frames, encoded, ckpt.config.datasets[head])
    logits = np.asarray(forward(ckpt.params, {"video": x[None]}, head))[0].mean(axis=0)
    out[head] = Prediction(logits, ckpt.class_names[head], warnings + view_warnings)
  return out


def format_top_k(head: str, prediction: Prediction, k: int) -> str:
  logits, names = prediction.logits, prediction.class_names
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  order = np.argsort(-probs)[:k]
  width = max(len(names[i]) for i in order)
  lines = [f"{head} ({len(names)} classes):"]
  lines += [f"  warning: {w}" for w in prediction.warnings]
  lines += [f"  {rank}. {names[i]:<{width}}  {probs[i]:.4f}" for rank, i in enumerate(order, 1)]
  return "\n".join(lines)


def save_logits(path: str, results: dict[str, Prediction]) -> None:
  if path.endswith(".npz"):
    np.savez(path, **{head: p.logits for head, p in results.items()})
  elif len(results) == 1:
    np.save(path, next(iter(results.values())).logits)
  else:
    raise PredictError(f"--output={path}: {len(results)} heads give several arrays; save them "
                       "to a .npz, or pick one head with --dataset")


def define_flags() -> None:
  """The command's flags (defined only when it runs, so the module imports anywhere)."""
  flags.DEFINE_string("checkpoint", None, "Workdir, checkpoints dir, step dir or convert output.")
  flags.DEFINE_string("input", None, "Video file, or .npy of uint8 frames (T, H, W, 3).")
  flags.DEFINE_string("dataset", None, "Classify with this dataset's head only (default: every "
                      "head).")
  flags.DEFINE_integer("top_k", 5, "Classes to print per head.")
  flags.DEFINE_string("output", None, "Save the logits (.npy for one head, .npz for several).")
  flags.mark_flags_as_required(["checkpoint", "input"])


def main(argv):
  del argv
  run_log.capture(keep=False)  # results, not Orbax's INFO lines
  args = flags.FLAGS
  try:
    results = predict(args.checkpoint, args.input, args.dataset)
    if args.output:
      save_logits(args.output, results)
  except (PredictError, files.CheckpointFileError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for head, prediction in results.items():
    print(format_top_k(head, prediction, args.top_k), flush=True)


if __name__ == "__main__":
  _exits.imports_done()
  define_flags()
  app.run(main)
