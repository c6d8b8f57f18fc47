"""The main job end to end: train, evaluate, checkpoint, resume, and fail safely.

The command-line tests run `python -m cover_jax.main` in a subprocess, as a
user would; the resume test calls the trainer in-process to compare states.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cover_jax.train import loop, mixture
from tests.helpers import REPO, checkpoint_arrays, load_config

# With this seed the 'sample' mixture draws every tiny dataset within 6 steps
# (checked by `test_seed_samples_every_dataset_early`).
SEED = 2


def _main(workdir, data_dir, *flags, mode="train", env=None):
  cmd = [sys.executable, "-m", "cover_jax.main", "--config=configs/demo.py:tiny=true",
         f"--workdir={workdir}", f"--config.data_dir={data_dir}", f"--config.seed={SEED}",
         f"--mode={mode}", *flags]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, **(env or {})})


def _checkpoint_steps(workdir) -> list[int]:
  path = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())


def _records(workdir) -> list[dict]:
  with open(pathlib.Path(workdir) / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_seed_samples_every_dataset_early(tiny_config):
  weights = {name: ds.weight for name, ds in tiny_config.datasets.items()}
  mix = mixture.DatasetMixture(weights, "sample", SEED)
  assert {mix.datasets_at(step)[0] for step in range(6)} == set(weights)


@pytest.fixture(scope="module")
def trained(tiny_run):
  """One finished 6-step tiny run of the main job (conftest.tiny_run: seed SEED)."""
  return tiny_run


def test_main_prints_a_per_dataset_accuracy_table(trained):
  workdir, result = trained
  assert "Final accuracy after 6 steps" in result.stdout
  rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
          if line.split() and line.split()[0] in ("appearance", "motion", "images")}
  assert set(rows) == {"appearance", "motion", "images"}
  assert rows["motion"][1:3] == ["8", "12.5%"] and rows["images"][1] == "36"
  assert (workdir / "results.txt").read_text().strip() in result.stdout


def test_main_writes_per_dataset_metrics_and_keeps_n_checkpoints(trained):
  workdir, _ = trained
  records = _records(workdir)
  keys = set().union(*records)
  for name in ("appearance", "motion", "images"):
    assert {f"train/{name}/loss", f"train/{name}/top1", f"train/{name}/skipped_records",
            f"eval/{name}/clip_top1", f"eval/{name}/clip_top5", f"eval/{name}/video_top1",
            f"eval/{name}/video_top5", f"eval/{name}/skipped_records"} <= keys
  assert {"train/learning_rate", "train/grad_norm", "steps_per_sec"} <= keys
  final_eval = [r for r in records if "eval/motion/video_top1" in r][-1]
  assert final_eval["step"] == 6
  assert _checkpoint_steps(workdir) == [3, 6]  # every 3 steps, keep 2
  assert list((workdir / "tensorboard").iterdir())


def test_main_eval_mode_evaluates_the_latest_checkpoint(trained, tiny_data_dir):
  workdir, train_result = trained
  result = _main(workdir, tiny_data_dir, mode="eval")
  assert result.returncode == 0, result.stderr[-3000:]
  final = train_result.stdout.split("Final accuracy after 6 steps:")[1]
  motion_row = next(line for line in final.splitlines() if line.startswith("motion"))
  # Same test accuracy as at the end of training (the train column is empty).
  assert " ".join(motion_row.split()[4:]) in " ".join(result.stdout.split())


def test_main_rerun_resumes_and_extends(trained, tiny_data_dir, tmp_path):
  workdir = tmp_path / "extended"
  shutil.copytree(trained[0], workdir)
  result = _main(workdir, tiny_data_dir, "--config.total_steps=9")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from checkpoint step 6" in result.stdout
  assert "step 3/9" not in result.stdout and "step 9/9" in result.stdout
  assert _checkpoint_steps(workdir) == [6, 9]


def test_invalid_config_exits_before_building_anything(tmp_path):
  result = _main(tmp_path / "w", tmp_path / "data", "--config.model.variant=Q/16",
                 "--config.datasets.motion.weight=-1")
  assert result.returncode == 2
  assert "model.variant" in result.stderr and "'Q/16'" in result.stderr
  assert "datasets.motion.weight" in result.stderr
  assert not (tmp_path / "data").exists() and not (tmp_path / "w" / "checkpoints").exists()


def test_eval_mode_without_a_checkpoint_says_so(tmp_path, tiny_data_dir):
  result = _main(tmp_path / "empty", tiny_data_dir, mode="eval")
  assert result.returncode == 1
  assert "no checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(trained, tiny_data_dir,
                                                                 tmp_path):
  workdir = tmp_path / "diverging"
  shutil.copytree(trained[0], workdir)
  # Resume from step 6 with an absurd learning rate: the weights blow up.
  result = _main(workdir, tiny_data_dir, "--config.total_steps=12",
                 "--config.optimizer.learning_rate=1e35", "--config.optimizer.warmup_steps=0")
  assert result.returncode == 3, result.stderr[-3000:]
  assert "non-finite" in result.stderr and "at step" in result.stderr
  assert "Traceback" not in result.stderr
  assert _checkpoint_steps(workdir) == [3, 6]  # nothing from the diverged steps
  again = _main(workdir, tiny_data_dir, mode="eval")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from checkpoint step 6" in again.stdout


def test_resumed_run_matches_an_uninterrupted_one(tiny_data_dir, tmp_path):
  config = load_config(arg="tiny=true", data_dir=tiny_data_dir, total_steps=9, seed=SEED)
  straight = loop.train_and_evaluate(config, str(tmp_path / "straight"))
  # One checkpoint per 3 steps: an interruption after step 6 loses step 9's.
  interrupted = tmp_path / "interrupted"
  shutil.copytree(tmp_path / "straight", interrupted)
  shutil.rmtree(interrupted / "checkpoints" / "9")
  resumed = loop.train_and_evaluate(config, str(interrupted))
  for name, result in straight.results.items():
    np.testing.assert_allclose(resumed.results[name]["video_loss"], result["video_loss"], rtol=1e-6)
  # Three datasets, two input shapes (4-frame videos, 1-frame images).
  assert straight.train_step_compilations == 2
  assert resumed.train_step_compilations <= 2


def test_all_mixture_trains_every_dataset_every_step(tiny_data_dir, tmp_path):
  config = load_config(arg="tiny=true,mixture=all", data_dir=tiny_data_dir, total_steps=3,
                       log_every=3)
  outcome = loop.train_and_evaluate(config, str(tmp_path))
  assert set(outcome.train_top1) == {"appearance", "motion", "images"}
  assert outcome.train_step_compilations == 1  # one step signature: a batch of each dataset
  records = [r for r in _records(tmp_path) if "train/images/loss" in r]
  assert [r["step"] for r in records] == [3]


def test_rerunning_a_finished_run_prints_its_results_and_writes_nothing(trained, tiny_data_dir):
  workdir, first = trained
  results_txt = (workdir / "results.txt").read_text()
  metrics = (workdir / "metrics.jsonl").read_text()
  again = _main(workdir, tiny_data_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "has finished all 6 steps" in again.stdout and results_txt.strip() in again.stdout
  evaluated = _main(workdir, tiny_data_dir, mode="eval")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  # The train column comes from the checkpoint, not '-'.
  motion = next(line for line in evaluated.stdout.splitlines() if line.startswith("motion"))
  assert motion.split()[3] == next(line for line in results_txt.splitlines()
                                   if line.startswith("motion")).split()[3] != "-"
  assert (workdir / "results.txt").read_text() == results_txt
  assert (workdir / "metrics.jsonl").read_text() == metrics  # no duplicate eval records


@pytest.mark.parametrize("flag, says", [
    ("--config.optimizer.learning_rat=3e-4",
     "--config.optimizer.learning_rat: the config has no field 'learning_rat'. "
     "Fix: --config.optimizer.learning_rate="),
    ("--config.total_steps=abc", "--config.total_steps=abc: invalid literal for int()"),
    ("--config=configs/demo.py:tiny=ture", "config argument tiny='ture': expected true or false"),
    ("--config=configs/demo.py:datasets=motoin", "unknown dataset(s) ['motoin']"),
    ("--config=configs/nope.py", "--config=configs/nope.py: no such config file"),
])
def test_config_mistakes_exit_2_with_one_line_naming_the_fix(tmp_path, flag, says):
  cmd = [sys.executable, "-m", "cover_jax.main", "--config=configs/demo.py:tiny=true",
         f"--workdir={tmp_path / 'w'}", flag]
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and says in lines[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


def test_a_train_only_dataset_and_a_long_name_in_the_table(tiny_data_dir, tmp_path, capsys):
  config = load_config(arg="tiny=true,datasets=appearance+motion", data_dir=tiny_data_dir,
                       seed=SEED, total_steps=3, log_every=3, checkpoint_every=3)
  with config.unlocked():
    config.datasets["digits_appearance"] = config.datasets.appearance
    del config.datasets["appearance"]
    config.datasets.motion.eval_split = ""  # train only, as ImageNet-21k
  outcome = loop.train_and_evaluate(config, str(tmp_path))
  assert set(outcome.results) == {"digits_appearance"} and "motion" in outcome.train_top1
  out = capsys.readouterr().out
  assert "motion: no eval split" in out
  table = (tmp_path / "results.txt").read_text().splitlines()
  header, motion = table[0], next(line for line in table if line.startswith("motion"))
  assert header.index("classes") > len("digits_appearance")  # the name column fits
  assert header.startswith("dataset ") and "no eval split" in motion
  assert f"{100 * outcome.train_top1['motion']:.1f}%" in motion


def test_what_a_finished_run_leaves_on_disk_is_complete(trained):
  workdir, _ = trained
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  last = json.loads(lines[-1])  # every line whole, the last one included
  assert last["step"] == 6 and all(json.loads(line) for line in lines)
  assert checkpoint_arrays(workdir, 6)  # the last checkpoint restores
  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == 6 and set(results["results"]) == {"appearance", "images", "motion"}
  timing = json.loads((workdir / "timing.json").read_text())
  assert {"datasets", "state", "first_step", "checkpoints_closed"} <= set(timing["marks"])
  assert json.loads((workdir / "config.json").read_text())["total_steps"] == 6
  log = (workdir / "log.txt").read_text()
  assert "log file" in log
  # The command held the collector during its imports, then froze what they made.
  done = log.split("imports done: ")[1].splitlines()[0]
  assert int(done.split()[0]) > 100_000 and done.endswith("during the imports: True)"), done
