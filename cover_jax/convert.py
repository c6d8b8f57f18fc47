r"""Converts a released checkpoint into an Orbax checkpoint of ours, plus the config that fits it.

  python -m cover_jax.convert --input=TimeSformer_divST_8x32_224_K400.pyth --output=/ckpt/tsf_k400
  python -m cover_jax.convert --input=/models/timesformer-base-finetuned-k400 --output=/ckpt/hf_k400 \
      --dataset=k400
  python -m cover_jax.convert --input=ViT-B_16.npz --output=/ckpt/vit_b16 --num_frames=8

Formats (--format, default auto): vit_npz, big_vision_npz, timesformer_pyth
(a .pyth/.pth, or the official state dict as .npz), hf (a HuggingFace model
directory or its model.safetensors / pytorch_model.bin with config.json
beside). The output directory then holds

  checkpoints/0/   the parameters (Orbax; meta: the config, class names, provenance)
  config.json      the config: model dimensions, input normalisation, and one
                   `datasets` entry per head (classes, frames, stride, crop)

and is accepted by `python -m cover_jax.predict --checkpoint=DIR` and by
`--config.init_from=DIR` in any training config. The model is read off the
checkpoint: dimensions from the shapes, heads / frames / size / class names
from what comes with it (HF config.json, the .pyth's cfg), each overridable
with a flag. A ViT image checkpoint becomes a TimeSformer as for fine-tuning
(temporal attention copied from spatial, temporal_fc and time embedding
zero); its ImageNet head is kept only if no pre_logits layer precedes it.
"""

from __future__ import annotations

import sys

from absl import app, flags

_INPUT = flags.DEFINE_string("input", None, "Checkpoint file or directory to convert.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write (must not hold a checkpoint).")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", "vit_npz", "big_vision_npz",
                                               "timesformer_pyth", "hf"], "Input format.")
_NUM_HEADS = flags.DEFINE_integer("num_heads", None, "Attention heads (default: from the "
                                  "checkpoint, else the standard variant of its width).")
_DATASET = flags.DEFINE_string("dataset", None, "Name for the checkpoint's classification head "
                               "(default: the .pyth cfg's TRAIN.DATASET, else 'head').")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "Frames per clip of the converted model "
                                   "(default: the checkpoint's; 8 for an image model).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Input size of the converted model "
                                   "(default: the checkpoint's).")
_STRIDE = flags.DEFINE_integer("stride", None, "Temporal stride for predict (default: the "
                               "checkpoint's cfg, else 32 frames at 30 fps as TimeSformer K400).")
_FPS = flags.DEFINE_float("fps", None, "Frame rate videos are decoded at for predict (default 30).")

def _flags_for(config: dict, output: str) -> str:
  model = config["model"]
  parts = [f"--config.init_from={output}", f"--config.model.variant={model['variant']}"]
  parts += [f"--config.model.{k}={model[k]}" for k in ("width", "depth", "num_heads", "mlp_dim") if model[k]]
  return " ".join(parts)


def main(argv):
  del argv
  from cover_jax.pretrained import conversion, files, fit  # pylint: disable=import-outside-toplevel

  try:
    config = conversion.convert(_INPUT.value, _OUTPUT.value, fmt=_FORMAT.value, num_heads=_NUM_HEADS.value,
                     dataset=_DATASET.value, num_frames=_NUM_FRAMES.value,
                     image_size=_IMAGE_SIZE.value, stride=_STRIDE.value, fps=_FPS.value)
  except (files.CheckpointFileError, fit.PretrainedMismatchError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  model = config["model"]
  heads = ", ".join(f"{n} ({d['num_classes']} classes)" for n, d in sorted(config["datasets"].items()))
  print(f"wrote {_OUTPUT.value}: variant {model['variant']}, {model['num_frames']} frames of "
        f"{model['image_size']} px, {model['attention_type']}; heads: {heads or 'none'}\n"
        f"fine-tune from it with: {_flags_for(config, _OUTPUT.value)}\n"
        f"classify a video with: python -m cover_jax.predict --checkpoint={_OUTPUT.value} --input=VIDEO",
        flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
