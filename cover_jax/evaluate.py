"""Per-dataset evaluation on the test splits and the final accuracy table.

Each test video is seen once, as its centre clip and centre crop ("1 clip x 1
crop"): `top1`/`top5` here are that single-view accuracy, not the multi-view
(several clips x crops averaged per video) numbers papers report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax


def evaluate_dataset(eval_fn: Callable, params, batches, dataset_index: int,
                     to_device: Callable) -> dict[str, float]:
  """Accuracy over one dataset's test split.

  Args:
    eval_fn: jitted `eval_step` (params, batch) -> summed counts.
    batches: iterable of host batches {'video', 'label', 'mask'}.
    dataset_index: the dataset's index among the model's heads.
    to_device: host batch -> global device arrays.
  """
  totals = {"top1": 0.0, "top5": 0.0, "loss": 0.0, "count": 0.0}
  pending = []
  for batch in batches:
    pending.append(eval_fn(params, to_device(batch, dataset_index)))
  for counts in jax.device_get(pending):  # one host sync for the whole split
    for key in totals:
      totals[key] += float(counts[key])
  count = max(totals["count"], 1.0)
  return {"top1": totals["top1"] / count, "top5": totals["top5"] / count,
          "loss": totals["loss"] / count, "num_examples": int(totals["count"])}


def format_table(results: Mapping[str, Mapping[str, float]], num_classes: Mapping[str, int],
                 train_top1: Mapping[str, float]) -> str:
  """A per-dataset accuracy table for the terminal."""
  header = (f"{'dataset':<12} {'classes':>7} {'chance':>7} {'train top1':>10} "
            f"{'test top1':>9} {'test top5':>9} {'test videos':>11}")
  lines = [header, "-" * len(header)]
  for name in sorted(results):
    r = results[name]
    train = f"{train_top1[name]:.1%}" if name in train_top1 else "-"
    lines.append(f"{name:<12} {num_classes[name]:>7} {1 / num_classes[name]:>7.1%} "
                 f"{train:>10} {r['top1']:>9.1%} {r['top5']:>9.1%} {r['num_examples']:>11}")
  lines.append("(test: 1 centre clip x 1 centre crop per video; train: mean over the last "
               "logging window)")
  return "\n".join(lines)

