"""One head of our model as a HuggingFace ``TimesformerForVideoClassification`` directory.

What ``transformers.TimesformerForVideoClassification.from_pretrained(DIR)``
loads with no missing or unexpected keys:

  config.json                     TimesformerConfig: dimensions, the clip shape, id2label
  model.safetensors               float32 weights; names from the importers' tables read
                                  backwards (timesformer_torch.from_ours, huggingface.from_official)
  preprocessor_config.json        VideoMAEImageProcessor (AutoImageProcessor): short-side
                                  resize, centre crop, [0, 1] and mean/std, as the head was
                                  evaluated
  video_preprocessor_config.json  TimesformerVideoProcessor (AutoVideoProcessor, transformers
                                  5.x): the same settings
  README.md                       the clip shape the model needs, and how to load it

The clip shape. HF's layers reshape tokens with the *configured* `num_frames`
and image grid, so it computes our logits only on clips of exactly that
shape; a clip with another frame count runs without error and gives wrong
logits. The export is configured for the clips the head is evaluated on: its
dataset's `num_frames` (the model's T for a video dataset; 1 for an image
dataset) and `crop_size` (normally the model's image size). Where these
differ from the model's, the time and position embeddings are resized as our
model resizes them at run time (nearest), so HF on such a clip computes our
logits.

Attention types. 'divided_space_time' and 'joint_space_time' are the same
model in HF and here. 'space_only' is not: HF keeps the frames apart up to
its classifier (logits per frame, (B*T, C)), where ours (the official model)
averages the cls token over frames before the final norm; it is refused.
"""

from __future__ import annotations

import json
import os

import numpy as np

from cover_jax.models import cover
from cover_jax.pretrained import huggingface, resize, timesformer_torch

FILES = ("config.json", "model.safetensors", "preprocessor_config.json",
         "video_preprocessor_config.json", "README.md")
_PIL_BILINEAR = 2  # HF's `resample`; our eval resize is (antialiased) bilinear too


def clip_shape(ds_config) -> tuple[int, int]:
  """(frames, pixels per side) of the clips a head is evaluated on: what HF is configured for."""
  return int(ds_config.num_frames), int(ds_config.crop_size)


def problems(model_config, ds_config, head: str) -> list[str]:
  """Why this head of this model cannot be exported exactly ([] if it can)."""
  out = []
  if model_config.attention_type == "space_only":
    out.append(f"--dataset={head}: the model's attention_type is 'space_only', which HuggingFace "
               "runs differently: it classifies every frame (logits (B*T, C)) and does not "
               "average the frames before the final norm as this model does, so its logits "
               "would not be this model's. Export it with --format=orbax instead, or train "
               "with --config.model.attention_type=divided_space_time (or joint_space_time)")
  _, size = clip_shape(ds_config)
  patch = cover.model_dims(model_config).patch_size
  if size % patch:
    out.append(f"--dataset={head}: its crop_size {size} is not a multiple of the patch size "
               f"{patch}; HuggingFace needs whole patches")
  return out


def state_dict(params: dict[str, np.ndarray], head: str, model_config, ds_config
               ) -> dict[str, np.ndarray]:
  """float32 HF state dict of our per-block `params`, `head` as the classifier.

  The embeddings are resized to the head's clip shape (see the module docstring).
  """
  frames, size = clip_shape(ds_config)
  grid = size // cover.model_dims(model_config).patch_size
  params = dict(params)
  params["backbone/pos_embed"] = resize.resize_pos_embed(
      params["backbone/pos_embed"], 1 + grid * grid, "nearest")
  if "backbone/time_embed" in params:
    params["backbone/time_embed"] = resize.resize_time_embed(params["backbone/time_embed"], frames)
  hf = huggingface.from_official(timesformer_torch.from_ours(params, head))
  return {k: np.ascontiguousarray(v, np.float32) for k, v in hf.items()}


def hf_config(model_config, ds_config, class_names: list[str], *, head: str, source: str
              ) -> dict:
  """config.json of a TimesformerForVideoClassification (inference: no dropout).

  Its `cover_jax_export` entry (transformers keeps unknown keys as attributes)
  lets `python -m cover_jax.convert` bring the head back as it was: its name,
  stride, and the processor's normalisation.
  """
  dims = cover.model_dims(model_config)
  frames, size = clip_shape(ds_config)
  names = [str(c) for c in class_names]
  return {
      "architectures": ["TimesformerForVideoClassification"],
      "model_type": "timesformer",
      "image_size": size,  # an int: HF's layers compute image_size // patch_size
      "patch_size": dims.patch_size,
      "num_channels": 3,
      "num_frames": frames,
      "hidden_size": dims.width,
      "num_hidden_layers": dims.depth,
      "num_attention_heads": dims.num_heads,
      "intermediate_size": dims.mlp_dim,
      "hidden_act": "gelu",  # exact (erf) GELU, as ours
      "layer_norm_eps": 1e-6,
      "qkv_bias": True,
      "attention_type": model_config.attention_type,
      "hidden_dropout_prob": 0.0,
      "attention_probs_dropout_prob": 0.0,
      "drop_path_rate": 0,  # an int: TimesformerConfig is strict and refuses 0.0
      "initializer_range": 0.02,
      "id2label": {str(i): n for i, n in enumerate(names)},
      "label2id": {n: i for i, n in enumerate(names)},
      "dtype": "float32",
      huggingface.EXPORT_KEY: {"dataset": head, "stride": int(ds_config.stride),
                               "sampling": ds_config.get("sampling", "stride"), "source": source},
  }


def short_side(ds_config, prepared: dict | None) -> int:
  """The short side evaluation resizes frames to before cropping (see evaluation/views.py).

  `eval_short_side` if set, else the side the dataset's videos were prepared
  at, else the crop size; never below the crop (small frames are enlarged).
  """
  side = ds_config.get("eval_short_side", 0) or (prepared or {}).get("short_side") or 0
  return max(int(side), int(ds_config.crop_size))


def processor_configs(ds_config, input_config, prepared: dict | None) -> tuple[dict, dict]:
  """(preprocessor_config.json, video_preprocessor_config.json) of the head's evaluation."""
  _, size = clip_shape(ds_config)
  common = {
      "do_resize": True, "size": {"shortest_edge": short_side(ds_config, prepared)},
      "resample": _PIL_BILINEAR,
      "do_center_crop": True, "crop_size": {"height": size, "width": size},
      "do_rescale": True, "rescale_factor": 1 / 255,
      "do_normalize": True,
      "image_mean": [float(m) for m in input_config.mean],
      "image_std": [float(s) for s in input_config.std],
  }
  image = {"image_processor_type": "VideoMAEImageProcessor", **common}
  # Without its own file, AutoVideoProcessor would infer a VideoMAE processor from the above.
  video = {"video_processor_type": "TimesformerVideoProcessor", "default_to_square": False,
           "do_convert_rgb": True, "do_sample_frames": False, **common}
  return image, video


def loading_example(out_dir: str, frames: int) -> str:
  """Five lines that load the export in transformers and classify one clip."""
  return "\n".join([
      "from transformers import AutoImageProcessor, TimesformerForVideoClassification",
      f"processor = AutoImageProcessor.from_pretrained({out_dir!r})",
      f"model = TimesformerForVideoClassification.from_pretrained({out_dir!r}).eval()",
      f"inputs = processor(list(frames), return_tensors='pt')  # exactly {frames} RGB frames, "
      "uint8 (H, W, 3)",
      "print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])"])


def frames_caveat(ds_config) -> str:
  """What a user of the export must know about its inputs."""
  frames, size = clip_shape(ds_config)
  sampling = ("one image per input" if frames == 1 else
              f"sample them as the model was evaluated ({ds_config.get('sampling', 'stride')} "
              f"sampling, stride {ds_config.stride})")
  return (f"Inputs must have exactly {frames} frame(s) (num_frames={frames}): HuggingFace's "
          "TimeSformer reshapes by its configured num_frames, so another count runs without "
          f"error and gives wrong logits. pixel_values: (batch, {frames}, 3, {size}, {size}); "
          f"{sampling}.")


def readme(head: str, source: str, ds_config, out_dir: str) -> str:
  return (f"# {head}: a CoVeR TimeSformer head, exported for HuggingFace transformers\n\n"
          f"Exported by `python -m cover_jax.export` from `{source}`.\n\n"
          f"{frames_caveat(ds_config)}\n\n"
          f"The processors resize, centre-crop and normalise as the head was evaluated "
          f"(one centre crop; our evaluation averages {ds_config.get('eval_clips', 1)} clips x "
          f"{ds_config.get('eval_crops', 1)} crops per video).\n\n"
          f"```python\n{loading_example(out_dir, clip_shape(ds_config)[0])}\n```\n")


def write(out_dir: str, state: dict[str, np.ndarray], jsons: dict[str, dict], readme_text: str
          ) -> None:
  """model.safetensors (numpy API), the JSON files by name, README.md."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

  os.makedirs(out_dir, exist_ok=True)
  save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  for name, content in jsons.items():
    with open(os.path.join(out_dir, name), "w") as f:
      json.dump(content, f, indent=2, sort_keys=True)
      f.write("\n")
  with open(os.path.join(out_dir, "README.md"), "w") as f:
    f.write(readme_text)
