r"""Classifies a video (or an array of frames) with a checkpoint: top-k classes per head.

  python -m cover_jax.predict --checkpoint=/ckpt/tsf_k400 --input=clip.mp4
  python -m cover_jax.predict --checkpoint=/tmp/cover_demo --input=frames.npy --dataset=motion \
      --top_k=3 --output=logits.npy

--checkpoint: a training workdir, its checkpoints/ directory, one step
directory, or a `python -m cover_jax.convert` output; the newest step that
restores is used. --input: a video file FFmpeg reads (mp4, webm, avi, ...;
decoded with PyAV) or a .npy array of uint8 RGB frames (T, H, W, 3) (or one
(H, W, 3) image).

Preprocessing comes from the checkpoint's config, per dataset head: videos
are decoded at the dataset's ``fps`` (if its config has one) with the short
side resized to ``eval_short_side`` (else ``crop_size``); ``eval_clips``
clips of ``num_frames`` frames ``stride`` apart (evenly spaced; one centre
clip by default, or one frame from the middle of each of ``num_frames``
segments for ``sampling='segment'``) x ``eval_crops`` crops of
``crop_size``; frames scaled to [0, 1] and normalised with ``input.mean`` /
``input.std``. Logits are averaged over the views. Class names come from
the checkpoint (saved by training runs and by `convert`), else ``class_<i>``.
--output saves the logits: a .npy for one head, a .npz (one array per head)
for several.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir, checkpoints dir, step dir or "
                                  "convert output.")
_INPUT = flags.DEFINE_string("input", None, "Video file, or .npy of uint8 frames (T, H, W, 3).")
_DATASET = flags.DEFINE_string("dataset", None, "Classify with this dataset's head only "
                               "(default: every head).")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Classes to print per head.")
_OUTPUT = flags.DEFINE_string("output", None, "Save the logits (.npy for one head, .npz for several).")


def main(argv):
  del argv
  from cover_jax import inference  # pylint: disable=import-outside-toplevel (after flag parsing)
  from cover_jax.pretrained import files  # pylint: disable=import-outside-toplevel

  try:
    results = inference.predict(_CHECKPOINT.value, _INPUT.value, _DATASET.value)
    if _OUTPUT.value:
      inference.save_logits(_OUTPUT.value, results)
  except (inference.PredictError, files.CheckpointFileError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  for head, (logits, names) in results.items():
    print(inference.format_top_k(head, logits, names, _TOP_K.value), flush=True)


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "input"])
  app.run(main)
