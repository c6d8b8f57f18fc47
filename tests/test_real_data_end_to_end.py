"""End to end on real video files: prepare -> read -> train a few steps -> multi-view eval -> predict."""

import json
import subprocess
import sys

import jax
import numpy as np

from cover_jax import predict
from cover_jax.evaluation import dataset as eval_data, step as eval_step
from cover_jax.input import pipeline
from cover_jax.prepare import cli as prepare_cli, dmvr_format, video_records
from cover_jax.train import loop
from tests import video_collections
from tests.helpers import REPO, load_config


def test_prepare_read_train_and_evaluate_multi_view(tmp_path):
  raw = video_collections.write_collection(tmp_path / "raw")
  data = tmp_path / "k400"
  # Stored frames larger than the 16-px crop: evaluation crops them as stored
  # (eval_short_side 0), and predict must do the same.
  settings = video_records.EncodeSettings(fps=10, short_side=24, jpeg_quality=90)
  for split in ("train", "validation"):  # the same 4 videos (+1 corrupt, skipped by prepare)
    entry = prepare_cli.prepare(prepare_cli.PrepareOptions(
        format="folder", output_dir=str(data), split=split, video_root=str(raw / "folder"),
        settings=settings, progress=False))
    assert entry["videos_written"] == 4 and entry["videos_skipped"] == 1

  config = load_config("configs/k400.py", f"tiny=true,data={data},steps=3",
                       **{"datasets.k400.num_classes": 2})
  ds = config.datasets.k400
  workdir = tmp_path / "work"
  outcome = loop.train_and_evaluate(config, str(workdir))
  result = outcome.results["k400"]
  views = ds.eval_clips * ds.eval_crops
  assert (ds.eval_clips, ds.eval_crops) == (2, 3)
  assert (result["num_videos"], result["num_clips"], result["skipped_records"]) == (4, 4 * views, 0)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  skipped = [r["train/k400/skipped_records"] for r in records if "train/k400/skipped_records" in r]
  assert skipped and skipped[-1] == 0
  assert "k400" in (workdir / "results.txt").read_text()

  # --mode=eval: the checkpoint gives the same numbers.
  again = loop.evaluate_checkpoint(config, str(workdir))
  assert again["k400"] == result

  # predict on each test video file gives the video-level logits evaluation computes for it.
  ckpt = predict.load(str(workdir))
  assert ckpt.prepared["k400"] == {"fps": 10.0, "short_side": 24, "jpeg_quality": 90}
  spec = pipeline.prepare_datasets(config)["k400"]
  names = [dmvr_format.parse_clip(raw)["filename"].numpy().decode()
           for raw in spec.source.read("validation", 0, 1)]
  forward = jax.jit(lambda params, batch: eval_step.view_logits(
      params, batch, graphdef=ckpt.graphdef, dataset="k400", mean=tuple(config.input.mean),
      std=tuple(config.input.std)))
  batches = eval_data.eval_dataset(spec)[0].as_numpy_iterator()
  video_logits = np.concatenate([np.asarray(forward(ckpt.params, {"video": b["video"]})).mean(1)
                                 for b in batches])
  for i, name in enumerate(names):
    got = predict.predict(str(workdir), str(raw / "folder" / name), "k400")["k400"]
    np.testing.assert_allclose(got.logits, video_logits[i], rtol=1e-5, atol=1e-5)


def test_main_stops_with_status_6_naming_a_dataset_without_records(tmp_path):
  empty = tmp_path / "k400"
  empty.mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "cover_jax.main", f"--config=configs/k400.py:tiny=true,data={empty}",
       f"--workdir={tmp_path / 'work'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 6, result.stderr[-3000:]
  assert "error: dataset 'k400': split 'train' has no examples" in result.stderr
  assert "Check: config.datasets.k400.path" in result.stderr
