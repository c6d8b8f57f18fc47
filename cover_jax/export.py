r"""Exports a trained model: to HuggingFace transformers, or as a release checkpoint of ours.

  python -m cover_jax.export --checkpoint=/tmp/cover_demo --dataset=motion --output=/tmp/motion_hf
  python -m cover_jax.export --checkpoint=/tmp/cover_demo --dataset=all --output=/tmp/demo_hf
  python -m cover_jax.export --checkpoint=/tmp/cover_demo --output=/tmp/demo_release --format=orbax

--checkpoint: a training workdir, its checkpoints/ directory, one step
directory, or a `python -m cover_jax.convert` output; the newest step that
restores is used. --dataset: the head to export (default: the only head;
with --format=orbax every head); `all`: every head.

--format=hf (default) writes, per head, a directory that
``transformers.TimesformerForVideoClassification.from_pretrained`` loads
(`pretrained/hf_export.py`: config.json, model.safetensors, the processors'
configs, README.md); with --dataset=all one directory per head, OUT/<head>.
HuggingFace's model computes this model's logits only on clips of exactly
the configured frame count (the head's `num_frames`): the command prints it.

--format=orbax writes a release: the parameters only (no optimizer state,
step 0), with the config, class names and how each dataset's videos were
prepared in its meta; the layout of a `convert` output (checkpoint/manager.py),
read by `--config.init_from=OUT` and `python -m cover_jax.predict --checkpoint=OUT`.

Everything is checked before anything is written (exit status 2 and an
`error: ...` line otherwise): the checkpoint restores and has a config, the
head exists, OUT does not exist or is empty, and for HF the model is one HF
runs exactly (not 'space_only').
"""

from __future__ import annotations

if __name__ == "__main__":  # the command: no garbage collection during the imports below
  from cover_jax.train import exits as _exits
  _exits.hold_garbage_collection()  # until they are done (train/exits.py)

import dataclasses
import json
import os
import sys

import ml_collections
from absl import app, flags, logging
from etils import epath

from cover_jax.checkpoint import manager
from cover_jax.models import block_stack
from cover_jax.pretrained import files, hf_export, loader, orbax_init
from cover_jax.pretrained.weights import PretrainedError
from cover_jax.metrics import run_log

FORMATS = ("hf", "orbax")
ALL = "all"


class ExportError(ValueError):
  """Input that cannot be exported; the message names the value and the fix."""


@dataclasses.dataclass
class Source:
  """The newest restoring step of a checkpoint: per-block parameters and its meta."""
  step_dir: str
  params: dict                         # our flat per-block path -> array
  config: ml_collections.ConfigDict
  class_names: dict[str, list[str]]    # head -> names (class_<i> where unknown)
  prepared: dict[str, dict | None]     # head -> how its dataset's videos were prepared
  meta: dict


def read_source(checkpoint: str) -> Source:
  try:
    weights = orbax_init.read(checkpoint)
  except files.CheckpointFileError as e:
    raise ExportError(f"--checkpoint={checkpoint}: {e}; give a training workdir, its "
                      "checkpoints/ directory, a step directory or a convert output") from None
  if not weights.info.config:
    raise ExportError(f"--checkpoint={checkpoint}: {weights.path} has no config in its meta "
                      "(not written by cover_jax training, convert or export)")
  config = ml_collections.ConfigDict(weights.info.config)
  meta = manager.read_meta(weights.path)
  names = {n: weights.info.class_names.get(n) or [f"class_{i}" for i in range(ds.num_classes)]
           for n, ds in config.datasets.items()}
  prepared = meta.get("prepared") or {}
  return Source(weights.path, weights.params, config, names,
                {n: prepared.get(n) for n in names}, meta)


def select_heads(source: Source, dataset: str | None, fmt: str) -> list[str]:
  """The heads to export; `dataset` None: the only head (orbax: all of them)."""
  heads = sorted(source.config.datasets)
  if fmt == "hf" and not heads:
    raise ExportError(f"--checkpoint: {source.step_dir} has no classification head to export "
                      "to HuggingFace (use --format=orbax for a backbone)")
  if dataset == ALL or (dataset is None and fmt == "orbax"):
    return heads
  if dataset is None:
    if len(heads) != 1:
      raise ExportError(f"--dataset is needed: {source.step_dir} has heads {', '.join(heads)}; "
                        "pass --dataset=NAME or --dataset=all")
    return heads
  if dataset not in heads:
    raise ExportError(f"--dataset={dataset}: no such head; the checkpoint's heads are "
                      f"{', '.join(heads) or 'none'} (or --dataset=all)")
  return [dataset]


def check_output(output: str) -> None:
  if files.exists(output) and (not files.isdir(output) or files.listdir(output)):
    raise ExportError(f"--output={output}: exists and is not an empty directory; choose a new "
                      "--output (nothing is overwritten)")


def hf_targets(source: Source, heads: list[str], output: str, dataset: str | None
               ) -> dict[str, str]:
  """{head: its output directory}, after checking every head exports exactly."""
  problems = [p for h in heads for p in hf_export.problems(
      source.config.model, source.config.datasets[h], h)]
  if problems:
    raise ExportError("; ".join(dict.fromkeys(problems)))
  if dataset == ALL:
    return {h: os.path.join(output, h) for h in heads}
  return {heads[0]: output}


def export_hf(source: Source, targets: dict[str, str]) -> list[str]:
  """Writes each head's HF directory; returns what to tell the user."""
  lines = []
  for head, out_dir in targets.items():
    ds = source.config.datasets[head]
    state = hf_export.state_dict(source.params, head, source.config.model, ds)
    image, video = hf_export.processor_configs(ds, source.config.input, source.prepared[head])
    config = hf_export.hf_config(source.config.model, ds, source.class_names[head], head=head,
                                 source=os.path.abspath(source.step_dir))
    jsons = {"config.json": config,
             "preprocessor_config.json": image, "video_preprocessor_config.json": video}
    hf_export.write(out_dir, state, jsons, hf_export.readme(head, source.step_dir, ds, out_dir))
    lines.append(f"wrote {out_dir}: head {head} ({len(source.class_names[head])} classes) as a "
                 f"TimesformerForVideoClassification, {len(state)} tensors\n"
                 f"  {hf_export.frames_caveat(ds)}")
  first = next(iter(targets))
  frames, _ = hf_export.clip_shape(source.config.datasets[first])
  lines.append("load it with:\n" + hf_export.loading_example(targets[first], frames))
  return lines


def export_orbax(source: Source, heads: list[str], output: str) -> list[str]:
  """Writes the release checkpoint; returns what to tell the user (sizes included)."""
  config = ml_collections.ConfigDict(source.config.to_dict())
  with config.unlocked():
    config.datasets = {h: source.config.datasets[h] for h in heads}
  num_classes = {h: int(ds.num_classes) for h, ds in config.datasets.items()}
  arrays = {k: v for k, v in source.params.items()
            if not k.startswith("heads/") or k.split("/")[1] in heads}
  if config.model.get("scan_layers", False):  # the saved layout follows the config
    arrays = block_stack.stack_flat(arrays)
  meta = {"step": 0, "config": config.to_json(),
          "class_names": {h: source.class_names[h] for h in heads},
          "prepared": {h: source.prepared[h] for h in heads},
          "exported_from": {"path": os.path.abspath(source.step_dir),
                            "step": source.meta.get("step")}}
  params = loader.params_state(arrays, config.model, num_classes)
  written = manager.write_params_only(output, params, config.to_json(indent=2), meta)
  read, wrote = dir_bytes(source.step_dir), dir_bytes(written)
  return [f"wrote {output}: parameters of {source.step_dir} (heads: {', '.join(heads) or 'none'})",
          f"  {_size(wrote)} written against {_size(read)} read: {_size(read - wrote)} saved "
          f"({100 * (read - wrote) / max(read, 1):.0f}%; no optimizer state)",
          f"fine-tune from it with: --config.init_from={output}",
          f"classify a video with: python -m cover_jax.predict --checkpoint={output} --input=VIDEO"]


def dir_bytes(path) -> int:
  """Total size of the files under a (local or remote) directory."""
  return sum(dir_bytes(p) if p.is_dir() else p.stat().length for p in epath.Path(path).iterdir())


def _size(num_bytes: int) -> str:
  return f"{num_bytes:,} bytes ({num_bytes / 2**20:.2f} MiB)"


def export(checkpoint: str, output: str, *, fmt: str = "hf", dataset: str | None = None
           ) -> list[str]:
  """Checks everything, then writes `output`; returns the lines to print.

  Raises:
    ExportError: what cannot be exported, and how to fix it (nothing written).
  """
  if fmt not in FORMATS:
    raise ExportError(f"--format={fmt}: use one of {', '.join(FORMATS)}")
  check_output(output)
  source = read_source(checkpoint)
  heads = select_heads(source, dataset, fmt)
  if fmt == "orbax":
    return export_orbax(source, heads, output)
  targets = hf_targets(source, heads, output, dataset)
  try:
    return export_hf(source, targets)
  # Parameters our own tables cannot name (not a model of ours) fail on the first head,
  # before its directory is written.
  except PretrainedError as e:
    raise ExportError(f"--checkpoint={checkpoint}: {e}") from None


def define_flags() -> None:
  """The command's flags (defined only when it runs, so the module imports anywhere)."""
  flags.DEFINE_string("checkpoint", None, "Workdir, checkpoints dir, step dir or convert output.")
  flags.DEFINE_string("dataset", None, "Head to export, or 'all' (default: the only head; "
                      "--format=orbax: every head).")
  flags.DEFINE_string("output", None, "Directory to write (must not exist, or be empty).")
  flags.DEFINE_enum("format", "hf", list(FORMATS), "hf: a HuggingFace transformers model "
                    "directory; orbax: a parameters-only release checkpoint of ours.")
  flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
  del argv
  run_log.capture(keep=False)  # results, not Orbax's INFO lines
  args = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # Orbax reports every restore at INFO
  try:
    lines = export(args.checkpoint, args.output, fmt=args.format, dataset=args.dataset)
  except (ExportError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print("\n".join(lines), flush=True)


if __name__ == "__main__":
  _exits.imports_done()
  define_flags()
  app.run(main)
