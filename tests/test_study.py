"""The co-training study: its statistics on hand-made numbers, its arms, and the command end to end.

The command's runs are tiny (4 steps, a 1-layer model): what is checked is that
every arm trains through the ordinary trainer in its own workdir, a finished
study trains nothing again, a lost result is recomputed, and the report holds
what the runs gave.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from cover_jax import study as study_command
from cover_jax.config import study_arms, validation
from cover_jax.evaluation import study_report
from cover_jax.prepare import synthetic
from tests.helpers import REPO, load_config

STUDY = "configs/study.py"


def _arms(*specs) -> list[study_arms.Arm]:
  """Arms (name, datasets, reference) with 10 steps, as study_arms builds them."""
  return [study_arms.Arm(name, name.split("-")[0], tuple(datasets), 10, "pretrained", reference,
                         10, 10 * len(datasets)) for name, datasets, reference in specs]


def test_mean_std_and_paired_differences_on_hand_made_numbers():
  assert study_report.mean_std([50.0, 60.0, 70.0]) == (60.0, 10.0)
  assert math.isnan(study_report.mean_std([42.0])[1])
  # Differences 5, 2, 6: mean 4.333, std 2.082, s.e. 1.202, t(2) = 4.303.
  c = study_report.paired_difference({0: 55.0, 1: 62.0, 2: 76.0}, {0: 50.0, 1: 60.0, 2: 70.0})
  assert c["n"] == 3 and c["seeds"] == [0, 1, 2]
  np.testing.assert_allclose([c["diff"], c["se"]], [13 / 3, math.sqrt(13 / 9)], rtol=1e-12)
  half = 4.303 * math.sqrt(13 / 9)
  np.testing.assert_allclose([c["low"], c["high"]], [13 / 3 - half, 13 / 3 + half])
  assert study_report.verdict(c) == "not resolved"
  helps = study_report.paired_difference({0: 5.0, 1: 6.0, 2: 7.0}, {0: 0.0, 1: 0.0, 2: 0.0})
  assert (helps["diff"], study_report.verdict(helps)) == (6.0, "helps")
  hurts = study_report.paired_difference({0: 0.0, 1: 0.0, 2: 0.0}, {0: 5.0, 1: 6.0, 2: 7.0})
  assert study_report.verdict(hurts) == "hurts"
  # Only the seeds both arms have are paired; one seed has no interval.
  one = study_report.paired_difference({0: 3.0, 5: 9.0}, {0: 1.0, 1: 4.0})
  assert (one["n"], one["diff"], study_report.verdict(one)) == (1, 2.0, "one seed: no interval")
  assert study_report.paired_difference({0: 1.0}, {1: 1.0}) == {"n": 0}


def test_summary_comparisons_and_report_from_hand_made_runs(tmp_path):
  arms = _arms(("alone-a", ["a"], ""), ("alone-m", ["m"], ""),
               ("videos", ["a", "m"], "alone-{dataset}"))
  per_seed = {"alone-a": [{"a": 0.5}, {"a": 0.6}, {"a": 0.7}],
              "alone-m": [{"m": 0.30}, {"m": 0.20}, {"m": 0.25}],
              "videos": [{"a": 0.55, "m": 0.31}, {"a": 0.66, "m": 0.22}, {"a": 0.77, "m": 0.27}]}
  runs = [{"arm": arm, "seed": seed, "results": {d: {"video_top1": v} for d, v in values.items()},
           "train_top1": {d: 0.9 for d in values}}
          for arm, seeds in per_seed.items() for seed, values in enumerate(seeds)]
  report = study_report.build(arms, runs, ["a", "m"], {"seeds": [0, 1, 2], "regime": "hand-made.",
                                                       "datasets": {"a": {"classes": 10}}})
  a, m = report["summary"]["a"], report["summary"]["m"]
  np.testing.assert_allclose([a["alone-a"]["mean"], a["alone-a"]["std"]], [60.0, 10.0])
  assert (a["videos"]["steps_per_dataset"], a["videos"]["total_steps"]) == (10, 20)
  assert a["videos"]["reference"] == "alone-a" and m["videos"]["reference"] == "alone-m"
  np.testing.assert_allclose(a["videos"]["vs_reference"]["diff"], 6.0)   # +5, +6, +7
  np.testing.assert_allclose(m["videos"]["vs_reference"]["diff"], 5 / 3)  # +1, +2, +2
  np.testing.assert_allclose(a["alone-a"]["train_mean"], 90.0)
  verdicts = {(c["dataset"], c["arm"], c["reference"]): c["verdict"] for c in report["comparisons"]}
  assert verdicts == {("a", "videos", "alone-a"): "helps", ("m", "videos", "alone-m"): "helps"}
  study_report.write(tmp_path, report)
  text = (tmp_path / "study.md").read_text()
  assert "| videos | stage 0 | 10 | 20 | 90.0 | 66.0 ± 11.0 (3) | alone-a | +6.0 ± 0.6 |" in text
  assert "helps on a (+6.0 ± 0.6), m (+1.7 ± 0.3)." in text
  assert json.loads((tmp_path / "study.json").read_text())["summary"]["a"]["videos"]["n"] == 3
  assert (tmp_path / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finding_that_does_not_appear_is_named_with_its_size():
  found = [{"dataset": "a", "diff": 3.0, "se": 0.5, "verdict": "helps", "n": 3},
           {"dataset": "m", "diff": -1.25, "se": 2.0, "verdict": "not resolved", "n": 3,
            "low": -9.86, "high": 7.36}]
  assert study_report.finding_sentence("(1) co-training", found) == (
      "(1) co-training: helps on a (+3.0 ± 0.5); does not appear on m (-1.2 ± 2.0: "
      "not resolved, 95% interval [-9.9, +7.4]).")


@pytest.mark.parametrize("arg", [None, "quick=true", "tiny=true"])
def test_study_configs_plan_arms_that_validate(arg):
  study = load_config(STUDY, arg)
  assert study.is_locked and study.seeds >= 2
  study_arms.check(study, num_devices=1)  # every arm's training config, as main checks it
  runs = study_arms.plan(study, "/study")
  assert runs[0].arm.name == "pretrain" and runs[0].config.init_from == ""
  arms = {r.arm.name: r for r in runs if r.seed == 0 and r.arm.name != "pretrain"}
  assert arms["alone-motion"].config.init_from == "/study/pretrain"
  assert arms["scratch-alone-motion"].config.init_from == ""
  assert sorted(arms["videos"].config.datasets) == ["appearance", "motion"]
  assert arms["videos"].config.mixture == "all"  # `steps` batches of every dataset
  assert len(runs) == 1 + study.seeds * len(arms)
  if arg is None:  # the full grid: 2x steps for equal total steps; fine-tuning from videos_images
    assert arms["alone_total-motion"].arm.steps == 2 * study.steps
    assert arms["finetune-motion"].config.init_from == "/study/videos_images/seed0"
    assert arms["finetune-motion"].config.optimizer.name == "sgd"
    assert arms["finetune-motion"].arm.steps_per_dataset == study.steps + study.finetune.steps


def test_study_config_errors_name_the_field_and_the_fix():
  study = load_config(STUDY, "tiny=true", seeds=0, arms="alone+videos+typo",
                      videos="appearance+kinetics", **{"datasets.motion.batch_size": 6})
  with pytest.raises(validation.ConfigError) as e:
    study_arms.check(study, num_devices=4)
  text = str(e.value)
  assert "config.seeds = 0: must be >= 1. Fix: --config.seeds=3" in text
  assert "unknown arm kind(s) ['typo']" in text and "not in datasets" in text
  ok = load_config(STUDY, "tiny=true", **{"datasets.motion.batch_size": 6})
  with pytest.raises(validation.ConfigError, match=r"config\.datasets\.motion\.batch_size = 6"):
    study_arms.check(ok, num_devices=4)


def test_the_pretraining_images_are_not_in_any_test_split():
  study = load_config(STUDY)
  images = study.datasets.images.synthetic
  render = {"num_frames": 1, "size": images.size, "noise": images.noise}
  train = {synthetic.render_example("synthetic_images", "train", i, seed=images.seed,
                                    **render)["image"].tobytes() for i in range(72)}
  for seed in (0, images.seed):  # the demo's test images and the study's own
    test = {synthetic.render_example("synthetic_images", "test", i, seed=seed,
                                     **render)["image"].tobytes() for i in range(72)}
    assert not train & test
  assert images.seed != 0 and all(
      study.datasets[n].synthetic.seed == 0 for n in ("appearance", "motion"))


def test_the_command_runs_the_grid_and_a_rerun_trains_nothing(tmp_path, capsys):
  workdir, data = tmp_path / "study", tmp_path / "tfds"
  result = subprocess.run(
      [sys.executable, "-m", "cover_jax.study",
       f"--config={STUDY}:tiny=true,arms=alone+videos_images",
       f"--workdir={workdir}", f"--config.train.data_dir={data}"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((workdir / "study.json").read_text())
  names = ["pretrain", "alone-appearance", "alone-motion", "videos_images"]
  assert sorted((r["arm"], r["seed"]) for r in report["runs"]) == sorted(
      [("pretrain", 0)] + [(n, s) for n in names[1:] for s in (0, 1)])
  for run in report["runs"]:
    saved = json.loads((workdir / run["workdir"] / "results.json").read_text())
    assert run["results"] == saved["results"]
  assert report["summary"]["motion"]["videos_images"]["reference"] == "alone-motion"
  assert "## What it shows" in (workdir / "study.md").read_text()

  # A killed study: one run lost its results; the same entry point trains only that one.
  (workdir / "videos_images" / "seed1" / "results.json").unlink()
  study = load_config(STUDY, "tiny=true,arms=alone+videos_images",
                      **{"train.data_dir": str(data)})
  capsys.readouterr()
  again = study_command.run_study(study, str(workdir))
  trained = [line for line in capsys.readouterr().out.splitlines() if line.startswith("=== ")]
  assert len(trained) == 1 and "videos_images, seed 1" in trained[0]
  assert len(again["runs"]) == len(report["runs"])


def test_a_bad_config_argument_exits_2_with_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "cover_jax.study", f"--config={STUDY}:seeds=many",
       f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: --config=configs/study.py:seeds=many: config argument seeds='many': expected a int"]
  assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """Two DMVR datasets made by the prepare tool from real video files, and an image folder."""
  from cover_jax.prepare import cli as prepare_cli, video_records
  from tests import data_files, video_collections

  root = tmp_path_factory.mktemp("prepared")
  raw = video_collections.write_collection(root / "raw")
  settings = video_records.EncodeSettings(fps=10, short_side=24, jpeg_quality=90)
  sources = {  # dataset -> (format, annotations, video root, class list)
      "k400": ("folder", None, raw / "folder", None),
      "ssv2": ("ssv2", raw / "ssv2" / "train.json", raw / "ssv2" / "videos",
               raw / "ssv2" / "labels.json")}
  for name, (fmt, labels_file, videos, classes) in sources.items():
    for split in ("train", "validation"):  # the same videos: a test of the wiring, not of accuracy
      prepare_cli.prepare(prepare_cli.PrepareOptions(
          format=fmt, output_dir=str(root / name), split=split, video_root=str(videos),
          annotations=labels_file and str(labels_file), class_list=classes and str(classes),
          settings=settings, progress=False))
  data_files.write_image_folder(root / "in21k", "train", {"cat": 3, "dog": 3, "fox": 2})
  return root


def test_the_study_runs_on_prepared_dmvr_datasets_and_an_image_folder(prepared, tmp_path):
  study = load_config(
      STUDY, f"tiny=true,seeds=1,arms=alone+videos_images,k400={prepared / 'k400'},"
      f"ssv2={prepared / 'ssv2'},in21k={prepared / 'in21k'}",
      **{"datasets.k400.num_classes": 2, "datasets.ssv2.num_classes": 3,
         "datasets.in21k.num_classes": 3})
  assert (study.videos, study.images, study.pretrain.dataset) == ("k400+ssv2", "in21k", "in21k")
  study_arms.check(study, num_devices=1)
  report = study_command.run_study(study, str(tmp_path / "study"))
  runs = {r["arm"]: r for r in report["runs"]}
  assert sorted(runs) == ["alone-k400", "alone-ssv2", "pretrain", "videos_images"]
  assert runs["pretrain"]["results"] == {}  # ImageNet-21k has no held-out split
  assert sorted(runs["videos_images"]["results"]) == ["k400", "ssv2"]
  k400 = runs["videos_images"]["results"]["k400"]
  assert (k400["num_videos"], k400["num_clips"]) == (4, 4 * 2 * 3)  # 2 clips x 3 crops each
  config = json.loads((tmp_path / "study" / "videos_images" / "seed0" / "config.json").read_text())
  assert config["init_from"] == str(tmp_path / "study" / "pretrain")
  assert config["datasets"]["ssv2"]["source"] == "dmvr"
  assert config["datasets"]["in21k"]["source"] == "image_folder"
  assert report["summary"]["ssv2"]["videos_images"]["reference"] == "alone-ssv2"
