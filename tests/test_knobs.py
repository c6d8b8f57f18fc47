"""Every config field acts, leaves the math unchanged, or is bookkeeping: each proven here.

Each field of the defaults (config/defaults.py: top level, model, optimizer,
input, nonfinite, init, dataset, augment) and of the embedded datasets'
`synthetic` block is in exactly one list:

- ACTS: a short tiny run through the trainer's entry point (what
  `python -m cover_jax.main` calls, `loop.train_and_evaluate`) with the field
  changed logs other training metrics (or, for evaluation fields, other eval
  metrics), or ends otherwise, than the same run without the change;
- SAME_MATH: the change leaves every logged training loss equal to float
  tolerance (on 8 fake devices in a subprocess for the mesh and sharding
  rules);
- BOOKKEEPING: paths, periods, names, each with its reason.

A field in no list (a new one) or in two fails `test_every_field_is_classified_once`.
Runs are cached by their overrides: the baselines are trained once.
"""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from cover_jax.config import defaults, validation
from cover_jax.train import loop
from tests.helpers import REPO, fake_devices_env, load_config

# Base runs, as overrides of `_base_config()` (motion only, 4 steps, no eval).
TWO = {"arg": "datasets=motion+appearance"}         # the mixture's fields need two datasets
EVAL = {"datasets.motion.eval_split": "test"}      # evaluation fields
SGD = {"optimizer.name": "sgd"}
SKIP_NAN = {"nonfinite.inject_at_step": 1, "nonfinite.policy": "skip"}
DEEP = {"model.depth": 2}
RRC = {"datasets.motion.augment.kind": "random_resized_crop"}
JITTER = {"datasets.motion.augment.kind": "scale_jitter",
          "datasets.motion.augment.short_side_range": (16, 24)}
RANDAUG = {"datasets.motion.augment.randaugment_layers": 2}
MIXUP = {"datasets.motion.augment.mixup_alpha": 0.8}
BOTH_MIX = {**MIXUP, "datasets.motion.augment.cutmix_alpha": 1.0}
INIT = {"init_from": "@source"}  # replaced by the workdir of SOURCE's run
# What init_from starts from: a run with two 8-class heads, motion and motion_b.
SOURCE = {"+datasets.motion_b": "motion", "total_steps": 3}
D = "datasets.motion."
A = D + "augment."
S = D + "synthetic."

# field -> [(base overrides, changed overrides), ...]: each change must act.
ACTS = {
    "seed": [({}, {"seed": 7})],
    "mixture": [(TWO, {"mixture": "all"})],
    "total_steps": [({}, {"total_steps": 5})],  # the schedule decays over total_steps
    "init_from": [({}, INIT)],
    "model.variant": [({}, {"model.variant": "Mu/4"})],  # patch size 4
    "model.width": [({}, {"model.width": 48, "model.num_heads": 2})],
    "model.depth": [({}, DEEP)],
    "model.num_heads": [({}, {"model.num_heads": 4})],
    "model.mlp_dim": [({}, {"model.mlp_dim": 32})],
    "model.image_size": [({}, {"model.image_size": 24})],  # position embedding resized
    "model.num_frames": [({}, {"model.num_frames": 2})],  # time embedding resized
    "model.attention_type": [({}, {"model.attention_type": "joint_space_time"}),
                             ({}, {"model.attention_type": "space_only"})],
    "model.dropout": [({}, {"model.dropout": 0.3})],
    "model.attention_dropout": [({}, {"model.attention_dropout": 0.3})],
    "model.stochastic_depth": [(DEEP, {"model.stochastic_depth": 0.5})],
    "model.dtype": [({}, {"model.dtype": "bfloat16"})],
    "model.time_embed_init_std": [({}, {"model.time_embed_init_std": 0.0})],
    "model.head_init_std": [({}, {"model.head_init_std": 0.0})],
    "optimizer.name": [({}, SGD)],
    "optimizer.learning_rate": [({}, {"optimizer.learning_rate": 3e-3})],
    "optimizer.end_learning_rate": [({}, {"optimizer.end_learning_rate": 5e-4})],
    "optimizer.warmup_steps": [({}, {"optimizer.warmup_steps": 1})],
    "optimizer.weight_decay": [({}, {"optimizer.weight_decay": 0.5})],
    "optimizer.b1": [({}, {"optimizer.b1": 0.5})],
    "optimizer.b2": [({}, {"optimizer.b2": 0.9})],
    "optimizer.momentum": [(SGD, {"optimizer.momentum": 0.0})],
    "optimizer.nesterov": [(SGD, {"optimizer.nesterov": True})],
    "optimizer.grad_clip_norm": [({}, {"optimizer.grad_clip_norm": 1e-3})],
    "input.mean": [({}, {"input.mean": (0.5, 0.5, 0.5)})],
    "input.std": [({}, {"input.std": (0.5, 0.5, 0.5)})],
    "input.shards": [({}, {"input.shards": 2})],  # two shard streams make a batch
    "nonfinite.policy": [(SKIP_NAN, {"nonfinite.policy": "stop"})],
    "nonfinite.max_consecutive_skips": [(SKIP_NAN, {"nonfinite.max_consecutive_skips": 1})],
    "nonfinite.inject_at_step": [({"nonfinite.policy": "skip"}, {"nonfinite.inject_at_step": 1})],
    "init.heads": [(INIT, {"init.heads": "none"})],
    "init.head_map": [(INIT, {"init.head_map": "motion=motion_b"})],  # the other head
    "init.posemb_resize": [({**INIT, "model.image_size": 24}, {"init.posemb_resize": "bilinear"})],
    D + "source": [({}, {D + "source": "synthetic_appearance", D + "num_classes": 12})],
    D + "train_split": [({}, {D + "train_split": "test"})],
    D + "eval_split": [(EVAL, {D + "eval_split": "train"})],
    D + "num_frames": [({}, {D + "num_frames": 2})],
    D + "stride": [({}, {D + "stride": 1})],
    D + "sampling": [({}, {D + "sampling": "segment"})],
    D + "crop_size": [({}, {D + "crop_size": 8})],
    D + "flip": [({}, {D + "flip": True})],
    D + "batch_size": [({}, {D + "batch_size": 4})],
    D + "eval_clips": [(EVAL, {D + "eval_clips": 2})],
    D + "eval_crops": [(EVAL, {D + "eval_crops": 3})],
    D + "eval_short_side": [(EVAL, {D + "eval_short_side": 24})],
    D + "weight": [(TWO, {D + "weight": 4.0})],
    D + "label_smoothing": [({}, {D + "label_smoothing": 0.3})],
    D + "shuffle_buffer": [({}, {D + "shuffle_buffer": 2})],
    A + "kind": [({}, {A + "kind": k}) for k in ("scale_jitter", "random_resized_crop",
                                                 "inception")],
    A + "short_side_range": [(JITTER, {A + "short_side_range": (20, 20)})],
    A + "area_range": [(RRC, {A + "area_range": (0.5, 0.6)})],
    A + "aspect_ratio_range": [(RRC, {A + "aspect_ratio_range": (0.5, 0.6)})],
    A + "randaugment_layers": [({}, RANDAUG)],
    A + "randaugment_magnitude": [(RANDAUG, {A + "randaugment_magnitude": 3.0})],
    A + "mixup_alpha": [({}, MIXUP)],
    A + "cutmix_alpha": [({}, {A + "cutmix_alpha": 1.0})],
    A + "mix_prob": [(MIXUP, {A + "mix_prob": 0.0})],
    A + "switch_prob": [(BOTH_MIX, {A + "switch_prob": 1.0})],
    S + "num_train": [({}, {S + "num_train": 24})],
    S + "num_test": [(EVAL, {S + "num_test": 8})],
    S + "num_frames": [({}, {S + "num_frames": 12})],
    S + "size": [({}, {S + "size": 24})],
    S + "seed": [({}, {S + "seed": 1})],
    S + "noise": [({}, {S + "noise": 48})],  # the difficulty knob (configs/study.py)
}

# field -> [(base overrides, changed overrides)]: the losses must stay equal.
SAME_MATH = {
    "grad_accum_steps": [({}, {"grad_accum_steps": 2})],
    "model.remat": [({}, {"model.remat": "full"}), ({}, {"model.remat": "dots"})],
    "model.scan_layers": [({**DEEP, "model.stochastic_depth": 0.5, "model.dropout": 0.2},
                           {"model.scan_layers": True})],
    "model.attention_impl": [({}, {"model.attention_impl": "xla"})],  # auto is xla on CPU
    "init.format": [(INIT, {"init.format": "orbax"})],
    D + "cache": [({}, {D + "cache": False})],
    D + "eval_batch_size": [(EVAL, {D + "eval_batch_size": 4})],
}
# Checked on 8 fake CPU devices, in a subprocess (`test_sharding_leaves_the_math_unchanged`).
SAME_MATH_ON_A_MESH = {
    "mesh_shape": {"mesh_shape": (8, 1, 1)},
    "axis_rules": {"mesh_shape": (1, 8, 1), "axis_rules.embed": ""},  # FSDP mesh, FSDP rule off
}

BOOKKEEPING = {
    "data_dir": "where TFDS datasets live; a dataset not there is an error (test_sources)",
    "log_every": "how often metrics are written; the step's math never reads it",
    "eval_every": "when periodic evaluations run; they do not touch the train state",
    "checkpoint_every": "when checkpoints are written (test_resume: resumed = uninterrupted)",
    "keep_checkpoints": "how many checkpoints stay on disk",
    D + "path": "where a dataset's files are; unused by the embedded sets (test_sources)",
    D + "tfds_name": "which TFDS dataset source 'tfds' opens (test_video_builders)",
    D + "file_pattern": "how record files are named on disk (test_sources)",
    D + "label_offset": "turns 1-based image_records labels 0-based (test_sources)",
    D + "num_classes": "must equal the dataset's class list: a mismatch is a config error",
}


def _all_fields() -> set[str]:
  config = defaults.base_config()
  fields = {k for k in config if k not in ("datasets", "axis_rules", "model", "optimizer",
                                           "input", "nonfinite", "init")} | {"axis_rules"}
  for group in ("model", "optimizer", "input", "nonfinite", "init"):
    fields |= {f"{group}.{k}" for k in config[group]}
  dataset = defaults.dataset_config()
  fields |= {D + k for k in dataset if k != "augment"} | {A + k for k in dataset.augment}
  fields |= {S + k for k in load_config(arg="tiny=true").datasets.motion.synthetic}
  return fields


def test_every_field_is_classified_once():
  lists = [set(ACTS), set(SAME_MATH), set(SAME_MATH_ON_A_MESH), set(BOOKKEEPING)]
  everything = _all_fields()
  classified = set().union(*lists)
  assert not everything - classified, f"fields in no list: {sorted(everything - classified)}"
  assert not classified - everything, f"not fields: {sorted(classified - everything)}"
  assert sum(len(x) for x in lists) == len(classified), "a field is in two lists"


def _base_config(tiny_data_dir, overrides: dict):
  overrides = dict(overrides)
  config = load_config(arg="tiny=true," + overrides.pop("arg", "datasets=motion"),
                       data_dir=tiny_data_dir, seed=2, total_steps=4, log_every=1,
                       eval_every=0, checkpoint_every=0)
  with config.unlocked():
    for ds in config.datasets.values():
      ds.eval_split = ""  # train only unless a test needs evaluation
  for dotted, value in overrides.items():
    if dotted.startswith("+"):  # "+datasets.NEW": "NAME": a copy of dataset NAME named NEW
      with config.unlocked():
        config.datasets[dotted.split(".")[-1]] = config.datasets[value].copy_and_resolve_references()
      continue
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    with config.unlocked():
      node[leaf] = value
  return config


class _Runs:
  """Trainer runs by their overrides, each done once, in this process.

  One process trains run after run (JAX and TensorFlow imported once, the
  compiled steps cached); the source run that `init_from` starts from comes
  first.
  """

  def __init__(self, data_dir, root):
    self.data_dir, self.root, self.done = data_dir, root, {}

  def run_all(self, overrides_list: list[dict]) -> None:
    for overrides in [SOURCE, *overrides_list]:
      self.get(overrides)

  def get(self, overrides: dict) -> dict:
    key = _key(overrides)
    if key not in self.done:
      self.done[key] = _run(self.data_dir, str(self.root), overrides,
                            str(self.root / _key(SOURCE)))
    return self.done[key]


def _run(data_dir: str, root: str, overrides: dict, source: str) -> dict:
  """One run through the trainer's entry point: its logged training metrics and results."""
  if overrides.get("init_from") == "@source":
    overrides = {**overrides, "init_from": source}
  workdir = pathlib.Path(root) / _key(overrides)
  config = _base_config(data_dir, overrides)
  validation.validate_config(config, num_devices=1)  # as the command does first
  try:
    outcome = loop.train_and_evaluate(config, str(workdir))
  except loop.NonFiniteLossError as e:
    return {"ended": type(e).__name__, "train": _train_log(workdir)}
  return {"train": _train_log(workdir), "eval": outcome.results}


def _key(overrides: dict) -> str:
  """A workdir name for the run of `overrides` (the same in every process)."""
  text = json.dumps(overrides, sort_keys=True, default=str)
  return "run-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _train_log(workdir) -> list[dict]:
  """Every logged training scalar, per step (skip counts and steps/s left out)."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
  return [{k: v for k, v in r.items() if k.startswith("train/") and "skipped" not in k}
          for r in records if any(k.startswith("train/") for k in r)]


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory):
  done = _Runs(tiny_data_dir, tmp_path_factory.mktemp("knobs"))
  cases = [c for table in (ACTS, SAME_MATH) for pairs in table.values() for c in pairs]
  done.run_all([{}] + [o for base, change in cases for o in (base, {**base, **change})])
  return done


def _close(x: float, y: float, rtol: float, atol: float) -> bool:
  return (math.isnan(x) and math.isnan(y)) or bool(np.isclose(x, y, rtol=rtol, atol=atol))


def _eval_close(a, b, rtol, atol) -> bool:
  a, b = a or {}, b or {}
  return a.keys() == b.keys() and all(
      a[n].keys() == b[n].keys() and all(_close(a[n][k], b[n][k], rtol, atol) for k in a[n])
      for n in a)


def _same(a: dict, b: dict, rtol=2e-4, atol=2e-5) -> bool:
  """Every logged training metric and every eval result equal to float tolerance."""
  return (a.get("ended") == b.get("ended") and len(a["train"]) == len(b["train"])
          and all(x.keys() == y.keys() and all(_close(x[k], y[k], rtol, atol) for k in x)
                  for x, y in zip(a["train"], b["train"]))
          and _eval_close(a.get("eval"), b.get("eval"), rtol, atol))


def _differs(a: dict, b: dict) -> bool:
  """A step both logged differs, or the evaluation, or how the run ended.

  A longer or shorter log alone does not count: the change must alter the
  numbers of the steps both runs trained.
  """
  if a.get("ended") != b.get("ended") or not _eval_close(a.get("eval"), b.get("eval"), 0, 0):
    return True
  return any(x.keys() != y.keys() or any(not _close(x[k], y[k], 0, 0) for k in x)
             for x, y in zip(a["train"], b["train"]))


@pytest.mark.parametrize("field, index", [(f, i) for f, cases in ACTS.items()
                                          for i in range(len(cases))])
def test_the_field_acts(runs, field, index):
  base, change = ACTS[field][index]
  assert _differs(runs.get(base), runs.get({**base, **change})), (
      f"{field}: changing {change} left training and evaluation as they were")


@pytest.mark.parametrize("field, index", [(f, i) for f, cases in SAME_MATH.items()
                                          for i in range(len(cases))])
def test_the_field_leaves_the_math_unchanged(runs, field, index):
  base, change = SAME_MATH[field][index]
  baseline, changed = runs.get(base), runs.get({**base, **change})
  assert baseline["train"], "no training metrics were logged"
  assert _same(baseline, changed), f"{field}: {change} changed the losses:\n{baseline}\n{changed}"


def _main_on_eight_devices(data_dir, workdir, overrides: dict) -> subprocess.CompletedProcess:
  """`python -m cover_jax.main` with the base run's settings, on 8 fake CPU devices."""
  flags = [f"--config.{k}={v}" for k, v in {
      "seed": 2, "total_steps": 4, "log_every": 1, "eval_every": 0, "checkpoint_every": 0,
      "data_dir": data_dir, "datasets.motion.eval_split": "", **overrides}.items()]
  env = fake_devices_env(8)
  return subprocess.run([sys.executable, "-m", "cover_jax.main",
                         "--config=configs/demo.py:tiny=true,datasets=motion",
                         f"--workdir={workdir}", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_sharding_leaves_the_math_unchanged(runs, tiny_data_dir, tmp_path):
  """The main command on 8 devices, data parallel and FSDP: the one-device run's losses."""
  baseline = runs.get({})
  for name, overrides in SAME_MATH_ON_A_MESH.items():
    result = _main_on_eight_devices(tiny_data_dir, tmp_path / name, overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "8 device(s)" in result.stdout and "Final accuracy after 4 steps" in result.stdout
    logged = {"train": _train_log(tmp_path / name), "eval": baseline.get("eval")}
    assert _same(baseline, logged, rtol=1e-3), (name, baseline, logged)
