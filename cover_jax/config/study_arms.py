"""A co-training study's arms: an ordinary training config per arm and seed, each in its workdir.

A study config (configs/study.py) names the datasets, a training template
(`train`), the pretraining stage, the arm kinds and the number of seeds; this
module turns it into the runs that `python -m cover_jax.study` trains, in order:

  <DIR>/pretrain/           stage 0: the image set `pretrain.dataset` alone for
                            `pretrain.steps` steps, from random weights (skipped
                            when `pretrain.init_from` names a released checkpoint)
  then for seed s = 0 .. seeds-1, each in <DIR>/<arm>/seed<s>/:
  alone-<v>                 one video set v, `steps` steps, from stage 0 (always
                            in the grid: every comparison is against it)
  alone_total-<v>           v alone for (number of video sets) x `steps` steps
  videos                    every video set together, `steps` steps, from stage 0
  videos_images             the video sets and the image set(s) together, `steps` steps
  finetune-<v>              videos_images' checkpoint of the same seed, then v alone for
                            `finetune.steps` steps with `finetune.optimizer`
  scratch-alone-<v>         as alone-<v>, from random weights
  scratch-videos_images     as videos_images (as videos when there are no images),
                            from random weights: what pretraining changes

How steps are matched. A co-trained arm trains on one batch of every one of its
datasets at every step (mixture 'all', equal weights: the loss is the mean of
the datasets' losses), so in `steps` steps each dataset gives exactly `steps`
batches, as in its 'alone' arm: those arms compare at equal steps per dataset
(and an equal number of optimizer updates). 'alone_total' compares at equal
total steps: the single-dataset run gets as many batches as 'videos' took from
all its datasets together. Every arm warms up over the same
`train.optimizer.warmup_steps` and decays its cosine over its own length.

Seeds. Seed s is each run's `config.seed`: the initialisation of what is not
pretrained (new heads; everything for stage 0 and the scratch arms), the data
order, the augmentation. Stage 0 and the datasets are the same for every seed,
as a released checkpoint and a dataset are, so paired differences (arm minus
its reference, seed by seed) compare arms that share their seed.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re

import ml_collections

from cover_jax.config import validation

PRETRAIN = "pretrain"
KINDS = ("alone", "alone_total", "videos", "videos_images", "finetune", "scratch")


@dataclasses.dataclass(frozen=True)
class Arm:
  """One arm of the grid: what it trains on, for how long, from where.

  Attributes:
    name: its directory under the study's workdir and its row in the tables.
    kind: one of `KINDS` ('pretrain' for stage 0); a scratch arm has the kind it copies.
    datasets: the datasets it trains on (one head each).
    steps: its total_steps.
    start: 'pretrained' (stage 0 or pretrain.init_from), 'scratch', or the
      name of the arm whose checkpoint (same seed) it starts from.
    reference: the arm its paired differences are taken against, '{dataset}'
      standing for the dataset compared ('' for none).
    steps_per_dataset: batches of each of its datasets, its start's included
      (stage 0 is every arm's and is not counted).
    total_steps: batches of all datasets together, its start's included.
  """
  name: str
  kind: str
  datasets: tuple[str, ...]
  steps: int
  start: str
  reference: str = ""
  steps_per_dataset: int = 0
  total_steps: int = 0

  def reference_for(self, dataset: str) -> str:
    """The arm whose result on `dataset` this arm's paired difference is taken against."""
    return self.reference.format(dataset=dataset)


def _arm(name, kind, datasets, steps, start, reference="", before=(0, 0)) -> Arm:
  """An arm trained with mixture 'all': `steps` batches of each dataset (plus its start's)."""
  return Arm(name, kind, tuple(datasets), steps, start, reference,
             steps_per_dataset=before[0] + steps, total_steps=before[1] + steps * len(datasets))


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the study: an arm (or stage 0) for one seed."""
  arm: Arm
  seed: int
  workdir: str
  config: ml_collections.ConfigDict


def names(text: str) -> list[str]:
  """A '+'-joined list of names ('' -> [])."""
  return [n for n in text.split("+") if n]


def arms(study) -> list[Arm]:
  """The grid's arms, in the order they are trained for each seed (see the module docstring)."""
  kinds, videos, images = set(names(study.arms)), names(study.videos), names(study.images)
  s = study.steps
  widest = ("videos_images", videos + images) if images else ("videos", videos)
  out = [_arm(f"alone-{v}", "alone", [v], s, "pretrained") for v in videos]
  if "alone_total" in kinds:
    out += [_arm(f"alone_total-{v}", "alone_total", [v], s * len(videos), "pretrained",
                 f"alone-{v}") for v in videos]
  for kind, datasets in (("videos", videos), ("videos_images", videos + images)):
    if kind in kinds or (kind == "videos_images" and "finetune" in kinds):
      out.append(_arm(kind, kind, datasets, s, "pretrained", "alone-{dataset}"))
  if "finetune" in kinds:
    before = (s, s * len(videos + images))  # what videos_images trained first
    out += [_arm(f"finetune-{v}", "finetune", [v], study.finetune.steps, "videos_images",
                 f"alone-{v}", before) for v in videos]
  if "scratch" in kinds:
    out += [_arm(f"scratch-alone-{v}", "alone", [v], s, "scratch") for v in videos]
    out.append(_arm(f"scratch-{widest[0]}", widest[0], widest[1], s, "scratch",
                    "scratch-alone-{dataset}"))
  return out


def pretrain_arm(study) -> Arm | None:
  """Stage 0, or None when every arm starts from `pretrain.init_from` (or all from scratch)."""
  if study.pretrain.init_from or not study.pretrain.dataset:
    return None
  return _arm(PRETRAIN, PRETRAIN, [study.pretrain.dataset], study.pretrain.steps, "scratch")


def plan(study, root: str) -> list[Run]:
  """Every run of the study, in training order: stage 0, then seed by seed, arm by arm."""
  stage0 = pretrain_arm(study)
  runs = [Run(stage0, 0, _join(root, PRETRAIN), _config(study, stage0, 0, ""))] if stage0 else []
  pretrained = runs[0].workdir if runs else study.pretrain.init_from
  for seed in range(study.seeds):
    for arm in arms(study):
      workdir = _join(root, arm.name, f"seed{seed}")
      init = {"pretrained": pretrained, "scratch": ""}.get(
          arm.start, _join(root, arm.start, f"seed{seed}"))
      runs.append(Run(arm, seed, workdir, _config(study, arm, seed, init)))
  return runs


def _join(root: str, *parts: str) -> str:
  return "/".join([str(root).rstrip("/"), *parts]) if "://" in str(root) else os.path.join(
      root, *parts)


def _config(study, arm: Arm, seed: int, init_from: str) -> ml_collections.ConfigDict:
  """The arm's training config: the template, its datasets, steps, seed and start."""
  config = copy.deepcopy(study.train)
  with config.unlocked():
    for name in arm.datasets:
      config.datasets[name] = copy.deepcopy(study.datasets[name])
    config.total_steps = arm.steps
    config.seed = seed
    config.mixture = "all"  # every dataset every step: `steps` batches of each (see above)
    config.init_from = init_from
    if arm.kind == PRETRAIN:
      config.optimizer = copy.deepcopy(study.pretrain.optimizer)
    elif arm.kind == "finetune":
      config.optimizer = copy.deepcopy(study.finetune.optimizer)
  return config


def check(study, *, num_devices: int, process_count: int = 1) -> None:
  """Raises validation.ConfigError listing every problem of a study config.

  Study fields first (names, seeds, steps), then every arm's training config
  as `python -m cover_jax.main` checks a config, each problem named by the
  study's field (config.train.model.width, not config.model.width) with the
  arms it occurs in.
  """
  problems = _check_study(study)
  if not problems:
    arms_of: dict[str, list[str]] = {}
    for run in plan(study, "<workdir>"):
      if run.seed:
        continue  # the seeds' configs differ in config.seed only
      try:
        validation.validate_config(run.config, num_devices=num_devices,
                                   process_count=process_count)
      except validation.ConfigError as e:
        for line in str(e).splitlines()[1:]:
          arms_of.setdefault(_study_field(line.strip()[2:], run.arm), []).append(run.arm.name)
    problems = [f"{text} (arms: {', '.join(arms)})" for text, arms in arms_of.items()]
  if problems:
    raise validation.ConfigError("invalid study config:\n  - " + "\n  - ".join(problems))


def _study_field(problem: str, arm: Arm) -> str:
  """A training config's field in a problem, as the study config names it."""
  block = {PRETRAIN: "pretrain", "finetune": "finetune"}.get(arm.kind)

  def rename(match: re.Match) -> str:
    field = match.group(1)
    if field.startswith("datasets."):
      return match.group(0)
    if field == "total_steps":
      return f"config.{block}.steps" if block else "config.steps"
    if block and field.startswith("optimizer."):
      return f"config.{block}.{field}"
    return f"config.train.{field}"

  return re.sub(r"\bconfig\.([A-Za-z_][\w.]*)", rename, problem)


def _check_study(study) -> list[str]:
  out = []
  known = sorted(study.datasets)
  for field in ("videos", "images"):
    unknown = [n for n in names(study[field]) if n not in study.datasets]
    if unknown:
      kept = "+".join(n for n in names(study[field]) if n in known)
      out.append(_problem(field, study[field], f"names {unknown}, not in datasets {known}",
                          f"--config.{field}={kept}"))
  if not names(study.videos):
    out.append(_problem("videos", study.videos, "a study needs at least one video dataset",
                        f"--config.videos={known[0] if known else 'NAME'}"))
  bad = [k for k in names(study.arms) if k not in KINDS]
  if bad or not names(study.arms):
    out.append(_problem("arms", study.arms, f"unknown arm kind(s) {bad}; kinds: {'+'.join(KINDS)}",
                        "--config.arms=alone+videos+videos_images"))
  if "videos_images" in names(study.arms) and not names(study.images):
    out.append(_problem("arms", study.arms, "'videos_images' needs an image dataset in images",
                        "--config.images=NAME, or leave videos_images out of arms"))
  for field in ("seeds", "steps"):
    if study[field] < 1:
      out.append(_problem(field, study[field], "must be >= 1", f"--config.{field}=3"))
  pre = study.pretrain
  if pre.dataset and pre.dataset not in study.datasets and not pre.init_from:
    out.append(_problem("pretrain.dataset", pre.dataset, f"not in datasets {known}",
                        f"--config.pretrain.dataset={(names(study.images) or ['NAME'])[0]}"))
  if not pre.dataset and not pre.init_from:
    out.append(_problem("pretrain.dataset", pre.dataset, "the arms need a pretrained start: an "
                        "image dataset for stage 0, or pretrain.init_from",
                        "--config.pretrain.init_from=/ckpt/ViT-B_16.npz"))
  return out


def _problem(field: str, value, why: str, fix: str) -> str:
  return f"config.{field} = {value!r}: {why}. Fix: {fix}"
