"""Multi-view evaluation: clip-level and video-level counts against a computation by hand."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cover_jax.evaluation import step as eval_step, table as results_table
from cover_jax.train import optim, state as train_state
from cover_jax.parallel import sharding
from tests.helpers import load_config

CLASSES = {"appearance": 12, "images": 36, "motion": 8}
NAMES = tuple(sorted(CLASSES))


def _log_softmax(x):
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def test_video_level_is_the_mean_of_the_views_logits():
  config = load_config(arg="tiny=true")  # random heads (head_init_std 0.02): logits differ
  mesh = sharding.make_mesh(config.mesh_shape)
  tx = optim.build_optimizer(config.optimizer, config.total_steps)
  graphdef, _, shardings = train_state.abstract_train_state(config.model, CLASSES, tx, mesh)
  params = train_state.init_train_state(jax.random.key(3), config.model, CLASSES, tx,
                                        shardings).params
  rng = np.random.default_rng(0)
  b, v = 3, 4  # 3 videos (the last one padding) x (2 clips x 2 crops)
  video = rng.integers(0, 256, size=(b, v, 4, 16, 16, 3), dtype=np.uint8)
  mean_std = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
  normalised = (video / 255.0 - np.array(mean_std["mean"])) / np.array(mean_std["std"])

  # By hand: every view through the model on its own.
  model = nnx.merge(graphdef, params)
  logits = np.stack([[np.asarray(model.heads["motion"](model.backbone(
      jnp.asarray(normalised[i, j][None], jnp.float32), deterministic=True)))[0]
      for j in range(v)]
      for i in range(b)])  # (B, V, C)
  mean = logits.mean(axis=1)
  # Video 0 labelled with its video-level prediction, video 1 with its first view's.
  labels = np.array([mean[0].argmax(), logits[1, 0].argmax(), 0], np.int32)
  mask = np.array([1, 1, 0], np.int32)
  batch = {"video": jnp.asarray(video), "label": jnp.asarray(labels), "mask": jnp.asarray(mask),
           "dataset_index": jnp.asarray(NAMES.index("motion"), jnp.int32)}
  counts = jax.jit(lambda p, x: eval_step.multiview_eval_step(
      p, x, graphdef=graphdef, **mean_std))(params, batch)

  clip_hits = (logits.argmax(-1) == labels[:, None])[:2].sum()
  top5 = np.argsort(-logits, axis=-1)[..., :5]
  clip_top5 = (top5 == labels[:, None, None]).any(-1)[:2].sum()
  video_hits = (mean.argmax(-1) == labels)[:2].sum()
  video_top5 = (np.argsort(-mean, axis=-1)[:, :5] == labels[:, None]).any(-1)[:2].sum()
  video_loss = -_log_softmax(mean)[np.arange(b), labels][:2].sum()
  assert float(counts["video_top1"]) >= 1 and float(counts["clip_top1"]) >= 1
  np.testing.assert_allclose(
      [counts[k] for k in ("clip_top1", "clip_top5", "clip_count", "video_top1", "video_top5",
                           "video_count")],
      [clip_hits, clip_top5, 2 * v, video_hits, video_top5, 2])
  np.testing.assert_allclose(counts["video_loss"], video_loss, rtol=1e-4)


def test_table_names_both_accuracies():
  results = {"k400": {"clip_top1": 0.5, "clip_top5": 0.9, "video_top1": 0.75, "video_top5": 1.0,
                      "video_loss": 1.0, "num_videos": 4, "num_clips": 48, "skipped_records": 1}}
  table = results_table.format_table(results, {"k400": 400}, {}, {"k400": "4x3"})
  row = next(line for line in table.splitlines() if line.startswith("k400"))
  assert row.split() == ["k400", "400", "0.2%", "-", "4x3", "50.0%", "75.0%", "100.0%", "4", "1"]
  assert "video top1" in table and "clip top1" in table and "averaged per video" in table
  assert set(results_table.scalars(results)) == {
      "eval/k400/clip_top1", "eval/k400/clip_top5", "eval/k400/video_top1",
      "eval/k400/video_top5", "eval/k400/video_loss", "eval/k400/skipped_records"}
